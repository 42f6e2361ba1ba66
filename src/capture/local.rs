//! Which tables replicate: `include_tables`, `exclude_tables`, and the built-in node-local tables.
//!
//! Some tables belong to a tool running beside one node, never to the data the nodes share: Litestream's
//! bookkeeping and the temporary tables a table rebuild uses between its steps. They are never captured or
//! applied, in addition to the user's `exclude_tables` (which, with `[ddl] enabled` off, also holds the records
//! of applied migrations: each node's tool must see what ran on that node while migrations run node by node).
//!
//! Names are compared without regard to ASCII case (as SQLite does); a pattern may use `*` (any run of
//! characters, also none) and `?` (one character).

/// The built-in node-local tables (patterns) whatever `[ddl]` says: Litestream's bookkeeping (`_litestream_seq`,
/// `_litestream_lock`). The records of applied migrations ([`MIGRATION_RECORDS`]) are node-local only while
/// schema changes are made node by node: the configuration adds them to `exclude_tables` when `[ddl] enabled` is
/// off. Listed in docs/CONFIGURATION.md.
pub const BUILTIN_LOCAL: &[&str] = &["_litestream_*"];

pub use crate::config::MIGRATION_RECORDS;

/// Whether `name` is a migration tool's record of applied migrations.
pub fn is_migration_record(name: &str) -> bool {
    MIGRATION_RECORDS.iter().any(|p| matches(p, name))
}

/// Temporary tables of table rebuilds: Alembic's batch mode, Django's schema editor, sqlite-utils `transform`
/// (`<table>_new_<12 hex digits>`). Node-local too; while one exists, a rebuild is under way (see
/// `install::rebuild_floor`).
pub const REBUILD_TEMPORARY: &[&str] = &["_alembic_tmp_*", "new__*", "*_new_????????????"];

/// Whether `name` matches the glob `pattern` (`*`, `?`), without regard to ASCII case.
pub fn matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0usize, 0usize);
    // Position after the last `*` in the pattern and the name position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi + 1, ni));
                pi += 1;
            }
            Some(&c) if c == b'?' || c.eq_ignore_ascii_case(&n[ni]) => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Whether `name` is one of the built-in node-local tables.
pub fn is_builtin_local(name: &str) -> bool {
    BUILTIN_LOCAL.iter().any(|p| matches(p, name)) || is_rebuild_temporary(name)
}

/// Whether `name` is a table rebuild's temporary table.
pub fn is_rebuild_temporary(name: &str) -> bool {
    REBUILD_TEMPORARY.iter().any(|p| matches(p, name))
}

/// Whether table `name` replicates under `include` / `exclude` (patterns) and the built-in local tables.
pub fn selected(name: &str, include: &[String], exclude: &[String]) -> bool {
    (include.is_empty() || include.iter().any(|p| matches(p, name)))
        && !exclude.iter().any(|p| matches(p, name))
        && !is_builtin_local(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_names_without_regard_to_case() {
        assert!(matches("_litestream_*", "_litestream_seq"));
        assert!(matches("_LITESTREAM_*", "_litestream_lock"));
        assert!(matches("alembic_version", "Alembic_Version"));
        assert!(!matches("alembic_version", "alembic_versions"));
        assert!(matches("a*b*c", "axxbyyc"));
        assert!(!matches("a*b*c", "axxbyy"));
        assert!(matches("*", ""));
        assert!(matches("?", "x") && !matches("?", "") && !matches("?", "xy"));
        assert!(matches("*_new_????????????", "books_new_0123456789ab"));
        assert!(!matches("*_new_????????????", "books_new_short"));
    }

    #[test]
    fn tool_tables_stay_local_and_user_tables_replicate() {
        for local in [
            "_litestream_seq",
            "_litestream_lock",
            "_alembic_tmp_book",
            "new__library_book",
            "Books_new_a1b2c3d4e5f6",
        ] {
            assert!(!selected(local, &[], &[]), "{local} must stay local");
            // A user's own exclusions keep the built-ins.
            assert!(!selected(local, &[], &["other".into()]), "{local}");
        }
        for shared in [
            "Books",
            "library_book",
            "django_content_type",
            "auth_permission",
            "news",
        ] {
            assert!(selected(shared, &[], &[]), "{shared} must replicate");
        }
        // The records of applied migrations are the configuration's to exclude (with `[ddl]` off).
        for record in [
            "django_migrations",
            "Alembic_Version",
            "schema_migrations",
            "knex_migrations_lock",
        ] {
            assert!(is_migration_record(record), "{record}");
            assert!(selected(record, &[], &[]), "{record}");
        }
        assert!(!is_migration_record("library_book"));
        assert!(!selected("Books", &[], &["books".into()]));
        assert!(!selected("audit_2024", &[], &["audit_*".into()]));
        assert!(selected("Books", &["b*".into()], &[]));
        assert!(!selected("Authors", &["b*".into()], &[]));
    }
}
