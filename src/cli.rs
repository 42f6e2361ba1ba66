//! Command-line flags of the original, in Go's single-dash form (`-config x`, `-cleanup`) and in
//! `--double-dash` form. A small normaliser rewrites single-dash long flags before clap parses them.

use std::path::PathBuf;

use clap::{ArgAction, Parser};

/// What a run of the binary does: a node, or one command. Derived from the flags; two at once are refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// No command flag: run the node.
    #[default]
    Run,
    Version,
    Cleanup,
    SaveSnapshot,
    SchemaStatus,
    SchemaStatusCluster,
    Status,
    Verify,
    WaitReplicated,
    RemoveNode(u64),
    Changes,
}

impl Mode {
    /// The flag that asks for this mode, as written in the docs.
    pub fn flag(self) -> &'static str {
        match self {
            Mode::Run => "(none)",
            Mode::Version => "-version",
            Mode::Cleanup => "-cleanup",
            Mode::SaveSnapshot => "-save-snapshot",
            Mode::SchemaStatus => "-schema-status",
            Mode::SchemaStatusCluster => "-schema-status-cluster",
            Mode::Status => "-status",
            Mode::Verify => "-verify",
            Mode::WaitReplicated => "-wait-replicated",
            Mode::RemoveNode(_) => "-remove-node",
            Mode::Changes => "-changes",
        }
    }
}

/// Parsed command line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cli {
    /// What to do, from the command flags below (which stay for the commands that read their neighbours).
    pub mode: Mode,
    /// `-v`: log below WARN for a command, at DEBUG for a node (as `logging.verbose`).
    pub verbose: bool,
    pub config: Option<PathBuf>,
    pub node_id: Option<u64>,
    pub cleanup: bool,
    pub save_snapshot: bool,
    pub schema_status: bool,
    pub schema_status_cluster: bool,
    pub status: bool,
    pub json: bool,
    pub verify: bool,
    pub wait_replicated: bool,
    /// `-remove-node N`: forget node N cluster-wide, then exit.
    pub remove_node: Option<u64>,
    /// With `-remove-node`: remove a node whose status is fresh too.
    pub force: bool,
    /// `-timeout SECONDS`: how long a command may take or wait (`-verify`: 30 s, `-wait-replicated`: 60 s when
    /// not given).
    pub timeout: Option<u64>,
    pub cluster_addr: Option<String>,
    /// Comma-separated list split into entries (empty entries dropped).
    pub cluster_peers: Vec<String>,
    pub leaf_servers: Vec<String>,
    pub pprof: Option<String>,
    pub version: bool,
    /// `-changes`: print the change feed as NDJSON.
    pub changes: bool,
    /// With `-changes`: `-from CURSOR` (or `now`).
    pub from: Option<String>,
    /// With `-changes`: `-tables a,b`.
    pub tables: Vec<String>,
    /// With `-changes`: keep printing new changes until interrupted.
    pub follow: bool,
}

/// Flags that take a value (`-config x`, `-config=x`).
const VALUE_FLAGS: &[&str] = &[
    "config",
    "node-id",
    "cluster-addr",
    "cluster-peers",
    "leaf-servers",
    "pprof",
    "timeout",
    "remove-node",
    "from",
    "tables",
];

/// The clap view of the command line; [`parse_from`] turns it into a [`Cli`].
#[derive(Debug, Parser)]
#[command(
    name = "harmonylite",
    about = "Leaderless SQLite replication over NATS JetStream.",
    disable_version_flag = true,
    args_override_self = true,
    after_help = "Flags may also be written with a single dash, as in the original: -config x, -node-id=1, \
                  -cleanup, -cleanup=false."
)]
struct Args {
    /// Path of the TOML configuration file; without it the built-in defaults are used.
    #[arg(long, value_name = "PATH")]
    config: Option<String>,

    /// This node's id (non-zero); overrides `node_id` from the configuration file.
    #[arg(long = "node-id", value_name = "ID", value_parser = parse_go_uint)]
    node_id: Option<u64>,

    /// Remove HarmonyLite's triggers and change-log tables from the database, then exit.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", hide_default_value = true, value_parser = parse_go_bool, action = ArgAction::Set)]
    cleanup: bool,

    /// Save a snapshot of this node's database to the snapshot store, then exit (beside a running node too).
    #[arg(long = "save-snapshot", value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", hide_default_value = true,
          value_parser = parse_go_bool, action = ArgAction::Set)]
    save_snapshot: bool,

    /// Print this node's schema status, then exit.
    #[arg(long = "schema-status", value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", hide_default_value = true,
          value_parser = parse_go_bool, action = ArgAction::Set)]
    schema_status: bool,

    /// Print every node's schema fingerprint from the cluster's schema registry and the tables that differ, then
    /// exit (1 when the nodes' schemas differ).
    #[arg(long = "schema-status-cluster", value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", hide_default_value = true,
          value_parser = parse_go_bool, action = ArgAction::Set)]
    schema_status_cluster: bool,

    /// Print every node of the cluster: reachable or not, applied position and lag per shard, paused shards,
    /// version; then exit (1 when the cluster cannot be reached in time).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", hide_default_value = true, value_parser = parse_go_bool, action = ArgAction::Set)]
    status: bool,

    /// With -status: print one JSON document instead of the table.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", hide_default_value = true, value_parser = parse_go_bool, action = ArgAction::Set,
          requires = "status")]
    json: bool,

    /// Compare every node's tables (checksums and row counts) at one agreed point of the streams, then exit:
    /// 0 identical, 1 some table differs (named, with the nodes that differ), 2 a node did not answer in time
    /// or no common point was found.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", hide_default_value = true, value_parser = parse_go_bool, action = ArgAction::Set)]
    verify: bool,

    /// Wait until every change committed on this node before the call has been applied on every node of the
    /// cluster, then exit (0 once it has; 1 on timeout, naming the nodes behind, or when the cluster cannot be
    /// reached).
    #[arg(long = "wait-replicated", value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", hide_default_value = true,
          value_parser = parse_go_bool, action = ArgAction::Set)]
    wait_replicated: bool,

    /// How long a command may take or wait, in seconds (-verify: 30, -wait-replicated: 60 when not given).
    #[arg(long, value_name = "SECONDS", value_parser = parse_go_uint)]
    timeout: Option<u64>,

    /// Forget node N cluster-wide and for good (it is down and will not come back under that id), then exit:
    /// its positions, status and schema entries, its replicas of every stream; refused while N's status is
    /// fresh unless -force is given.
    #[arg(long = "remove-node", value_name = "N", value_parser = parse_go_uint)]
    remove_node: Option<u64>,

    /// With -remove-node: remove the node even though its status entry is fresh.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", hide_default_value = true, value_parser = parse_go_bool, action = ArgAction::Set,
          requires = "remove_node")]
    force: bool,

    /// Address (host:port) on which the embedded NATS server listens for cluster routes.
    #[arg(long = "cluster-addr", value_name = "HOST:PORT")]
    cluster_addr: Option<String>,

    /// Comma-separated route URLs of the other nodes' embedded NATS servers (nats:// or dns://).
    #[arg(long = "cluster-peers", value_name = "URLS")]
    cluster_peers: Option<String>,

    /// Comma-separated URLs of remote NATS servers to join as a leaf node (nats:// or dns://).
    #[arg(long = "leaf-servers", value_name = "URLS")]
    leaf_servers: Option<String>,

    /// Accepted for compatibility; this version serves no profiling endpoint (ignored, with a warning).
    #[arg(long, value_name = "HOST:PORT")]
    pprof: Option<String>,

    /// Print the version and exit.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", hide_default_value = true, value_parser = parse_go_bool, action = ArgAction::Set)]
    version: bool,

    /// Print the cluster's change feed (`[feed] enabled`) as one JSON record per line, from the oldest change it
    /// holds to its current end, then exit (0; 1 when the feed is not enabled or the cursor is older than what
    /// the feed holds; 2 for a cursor that is not one). See docs/FEED.md.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", hide_default_value = true, value_parser = parse_go_bool, action = ArgAction::Set)]
    changes: bool,

    /// With -changes: start right after this cursor (a record's "cursor"), or `now` for new changes only.
    #[arg(long, value_name = "CURSOR", requires = "changes")]
    from: Option<String>,

    /// With -changes: only these tables (comma-separated).
    #[arg(long, value_name = "TABLES", requires = "changes")]
    tables: Option<String>,

    /// With -changes: keep printing new changes until interrupted.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", hide_default_value = true, value_parser = parse_go_bool, action = ArgAction::Set,
          requires = "changes")]
    follow: bool,

    /// Say more: a command's progress lines (INFO and below), a node's DEBUG lines (as `logging.verbose`).
    #[arg(short = 'v', long, action = ArgAction::SetTrue)]
    verbose: bool,
}

/// Parses the command line (`args` starts with the program name). Accepts Go's single-dash long flags as well
/// as `--flags`. Help (`-h`, `-help`, `--help`) is returned as an error of kind
/// [`clap::error::ErrorKind::DisplayHelp`]; call `err.exit()` to print it.
pub fn parse_from<I: IntoIterator<Item = String>>(args: I) -> Result<Cli, clap::Error> {
    let args = Args::try_parse_from(normalise(args))?;
    let asked: Vec<Mode> = [
        (args.version, Mode::Version),
        (args.cleanup, Mode::Cleanup),
        (args.save_snapshot, Mode::SaveSnapshot),
        (args.schema_status, Mode::SchemaStatus),
        (args.schema_status_cluster, Mode::SchemaStatusCluster),
        (args.status, Mode::Status),
        (args.verify, Mode::Verify),
        (args.wait_replicated, Mode::WaitReplicated),
        (
            args.remove_node.is_some(),
            Mode::RemoveNode(args.remove_node.unwrap_or(0)),
        ),
        (args.changes, Mode::Changes),
    ]
    .into_iter()
    .filter_map(|(on, mode)| on.then_some(mode))
    .collect();
    let mode = match asked.as_slice() {
        [] => Mode::Run,
        [one] => *one,
        [first, second, ..] => {
            return Err(clap::Error::raw(
                clap::error::ErrorKind::ArgumentConflict,
                format!(
                    "{} and {} are two commands; run one at a time\n",
                    first.flag(),
                    second.flag()
                ),
            ));
        }
    };
    Ok(Cli {
        mode,
        verbose: args.verbose,
        config: args.config.filter(|p| !p.is_empty()).map(PathBuf::from),
        node_id: args.node_id,
        cleanup: args.cleanup,
        save_snapshot: args.save_snapshot,
        schema_status: args.schema_status,
        schema_status_cluster: args.schema_status_cluster,
        status: args.status,
        json: args.json,
        verify: args.verify,
        wait_replicated: args.wait_replicated,
        remove_node: args.remove_node,
        force: args.force,
        timeout: args.timeout,
        cluster_addr: args.cluster_addr.filter(|s| !s.is_empty()),
        cluster_peers: split_list(args.cluster_peers.as_deref()),
        leaf_servers: split_list(args.leaf_servers.as_deref()),
        pprof: args.pprof.filter(|s| !s.is_empty()),
        version: args.version,
        changes: args.changes,
        from: args.from,
        tables: split_list(args.tables.as_deref()),
        follow: args.follow,
    })
}

/// Rewrites Go-style flags for clap: `-name` becomes `--name`, and a value flag followed by its value as a
/// separate argument becomes `--name=value` (so that a value starting with `-` is not taken for a flag).
/// Single-letter flags (`-h`), `-` and everything after `--` are left alone.
fn normalise<I: IntoIterator<Item = String>>(args: I) -> Vec<String> {
    let mut it = args.into_iter();
    let mut out: Vec<String> = it.next().into_iter().collect();
    while let Some(arg) = it.next() {
        if arg == "--" {
            out.push(arg);
            out.extend(it);
            break;
        }
        let body = match arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) {
            Some(body) if body.chars().count() > 1 || arg.starts_with("--") => body,
            _ => {
                out.push(arg);
                continue;
            }
        };
        let name = body.split_once('=').map_or(body, |(name, _)| name);
        if !body.contains('=') && VALUE_FLAGS.contains(&name) {
            match it.next() {
                Some(value) => out.push(format!("--{name}={value}")),
                None => out.push(format!("--{name}")),
            }
        } else {
            out.push(format!("--{body}"));
        }
    }
    out
}

/// Splits a comma-separated list, trimming entries and dropping empty ones.
fn split_list(list: Option<&str>) -> Vec<String> {
    list.map(|l| {
        l.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    })
    .unwrap_or_default()
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("{s:?} is not a boolean (expected true or false)")),
    }
}

/// Go's `strconv.ParseUint(s, 0, 64)`, as used by the `flag` package: decimal, `0x` hex, `0o` or leading-`0`
/// octal, `0b` binary; `_` separators only after a base prefix.
fn parse_go_uint(s: &str) -> Result<u64, String> {
    let err = || format!("{s:?} is not an unsigned 64-bit integer");
    let lower = s.to_ascii_lowercase();
    let (digits, radix, prefixed) = if let Some(d) = lower.strip_prefix("0x") {
        (d, 16, true)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (d, 8, true)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (d, 2, true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (&lower[1..], 8, true)
    } else {
        (lower.as_str(), 10, false)
    };
    if digits.contains('_') && (!prefixed || digits.ends_with('_') || digits.contains("__")) {
        return Err(err());
    }
    let digits: String = digits.chars().filter(|&c| c != '_').collect();
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(err());
    }
    u64::from_str_radix(&digits, radix).map_err(|_| err())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        parse_from(
            std::iter::once("harmonylite")
                .chain(args.iter().copied())
                .map(String::from),
        )
    }

    fn ok(args: &[&str]) -> Cli {
        parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn no_flags() {
        assert_eq!(ok(&[]), Cli::default());
    }

    #[test]
    fn single_and_double_dash_are_equal() {
        let single = ok(&[
            "-config",
            "c.toml",
            "-node-id",
            "3",
            "-status",
            "-json",
            "-timeout",
            "7",
            "-cluster-addr",
            "localhost:4221",
            "-cluster-peers",
            "nats://a:1/",
            "-leaf-servers",
            "nats://l:7422",
            "-pprof",
            ":6060",
        ]);
        let double = ok(&[
            "--config",
            "c.toml",
            "--node-id",
            "3",
            "--status",
            "--json",
            "--timeout",
            "7",
            "--cluster-addr",
            "localhost:4221",
            "--cluster-peers",
            "nats://a:1/",
            "--leaf-servers",
            "nats://l:7422",
            "--pprof",
            ":6060",
        ]);
        assert_eq!(single, double);
        assert_eq!(
            single,
            Cli {
                mode: Mode::Status,
                verbose: false,
                config: Some(PathBuf::from("c.toml")),
                node_id: Some(3),
                cleanup: false,
                save_snapshot: false,
                schema_status: false,
                schema_status_cluster: false,
                status: true,
                json: true,
                verify: false,
                timeout: Some(7),
                wait_replicated: false,
                remove_node: None,
                force: false,
                cluster_addr: Some("localhost:4221".into()),
                cluster_peers: vec!["nats://a:1/".into()],
                leaf_servers: vec!["nats://l:7422".into()],
                pprof: Some(":6060".into()),
                version: false,
                changes: false,
                from: None,
                tables: Vec::new(),
                follow: false,
            }
        );
    }

    #[test]
    fn each_command_flag_is_its_mode_in_both_forms() {
        let cases = [
            (&["-version"][..], Mode::Version),
            (&["-cleanup"][..], Mode::Cleanup),
            (&["-save-snapshot"][..], Mode::SaveSnapshot),
            (&["-schema-status"][..], Mode::SchemaStatus),
            (&["-changes"][..], Mode::Changes),
            (&["-schema-status-cluster"][..], Mode::SchemaStatusCluster),
            (&["-status"][..], Mode::Status),
            (&["-verify"][..], Mode::Verify),
            (&["-wait-replicated"][..], Mode::WaitReplicated),
            (&["-remove-node", "4"][..], Mode::RemoveNode(4)),
            (&["-cleanup=false"][..], Mode::Run),
        ];
        for (args, mode) in cases {
            assert_eq!(ok(args).mode, mode, "{args:?}");
            let double: Vec<String> = args
                .iter()
                .map(|a| {
                    if a.starts_with('-') {
                        format!("-{a}")
                    } else {
                        a.to_string()
                    }
                })
                .collect();
            let double: Vec<&str> = double.iter().map(String::as_str).collect();
            assert_eq!(ok(&double).mode, mode, "{double:?}");
        }
        assert!(ok(&["-v"]).verbose && ok(&["--verbose"]).verbose);
        assert_eq!(ok(&["-v", "-status"]).mode, Mode::Status);
    }

    #[test]
    fn two_commands_at_once_are_refused_naming_both() {
        let e = parse(&["-status", "-verify"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
        let text = e.to_string();
        assert!(
            text.contains("-status") && text.contains("-verify"),
            "{text}"
        );
        assert!(parse(&["-cleanup", "-remove-node", "2"]).is_err());
        assert!(parse(&["-version", "-save-snapshot"]).is_err());
        assert!(parse(&["-status", "-verify=false"]).is_ok());
    }

    #[test]
    fn equals_forms() {
        assert_eq!(
            ok(&["-config=path/x.toml"]).config,
            Some(PathBuf::from("path/x.toml"))
        );
        assert_eq!(
            ok(&["--config=a=b.toml"]).config,
            Some(PathBuf::from("a=b.toml"))
        );
        assert_eq!(ok(&["-node-id=12"]).node_id, Some(12));
        assert_eq!(ok(&["-timeout=30"]).timeout, Some(30));
        assert!(parse(&["-timeout", "soon"]).is_err());
        assert_eq!(ok(&["-config="]).config, None);
    }

    #[test]
    fn go_bool_values() {
        assert!(ok(&["-cleanup=true"]).cleanup);
        assert!(!ok(&["-cleanup=false"]).cleanup);
        assert!(ok(&["--cleanup=1"]).cleanup);
        assert!(!ok(&["-version=F"]).version);
        assert!(ok(&["-schema-status-cluster=T"]).schema_status_cluster);
        assert!(
            !ok(&["-cleanup", "-cleanup=false"]).cleanup,
            "the last occurrence wins"
        );
        assert!(parse(&["-cleanup=maybe"]).is_err());
    }

    #[test]
    fn json_goes_with_status() {
        let cli = ok(&["-config", "n.toml", "-status", "-json"]);
        assert!(cli.status && cli.json);
        assert!(ok(&["-json=true", "-status=T"]).json);
        assert!(!ok(&["-status"]).json);
        assert!(
            parse(&["-json"]).is_err(),
            "-json without -status is refused"
        );
    }

    #[test]
    fn verify_with_and_without_a_timeout() {
        let cli = ok(&["-config", "n.toml", "-verify", "-timeout", "5"]);
        assert!(cli.verify);
        assert_eq!(cli.timeout, Some(5));
        assert_eq!(ok(&["-verify"]).timeout, None);
        assert_eq!(ok(&["-timeout=0x10", "-verify=true"]).timeout, Some(16));
        assert!(parse(&["-verify", "-timeout", "soon"]).is_err());
    }

    #[test]
    fn go_uint_values() {
        assert_eq!(ok(&["-node-id", "0x1f"]).node_id, Some(31));
        assert_eq!(ok(&["-node-id", "010"]).node_id, Some(8));
        assert_eq!(ok(&["-node-id", "0b101"]).node_id, Some(5));
        assert_eq!(ok(&["-node-id", "0x_ff_ff"]).node_id, Some(0xffff));
        assert_eq!(
            ok(&["-node-id", "18446744073709551615"]).node_id,
            Some(u64::MAX)
        );
        for bad in [
            "-1",
            "+1",
            "1_000",
            "abc",
            "",
            "18446744073709551616",
            "09",
            "0x",
        ] {
            assert!(parse(&["-node-id", bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn peers_are_split() {
        let cli = ok(&[
            "-cluster-peers",
            "nats://localhost:4221/,nats://localhost:4222/",
        ]);
        assert_eq!(
            cli.cluster_peers,
            ["nats://localhost:4221/", "nats://localhost:4222/"]
        );
        let cli = ok(&["-leaf-servers= a:1 , ,b:2,", "-cluster-peers", ""]);
        assert_eq!(cli.leaf_servers, ["a:1", "b:2"]);
        assert!(cli.cluster_peers.is_empty());
    }

    #[test]
    fn value_starting_with_dash() {
        assert_eq!(
            ok(&["-config", "-odd.toml"]).config,
            Some(PathBuf::from("-odd.toml"))
        );
    }

    #[test]
    fn unknown_flags_and_arguments_fail() {
        for args in [
            &["-bogus"][..],
            &["--bogus"],
            &["-x"],
            &["-leaf-server", "a"],
            &["stray"],
            &["-config"],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
        assert_eq!(
            parse(&["-bogus"]).unwrap_err().kind(),
            ErrorKind::UnknownArgument
        );
    }

    #[test]
    fn help_lists_every_flag() {
        for flag in ["-h", "--help", "-help"] {
            let err = parse(&[flag]).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::DisplayHelp, "{flag}");
            let text = err.render().to_string();
            for name in [
                "config",
                "node-id",
                "cleanup",
                "save-snapshot",
                "schema-status",
                "schema-status-cluster",
                "status",
                "json",
                "verify",
                "wait-replicated",
                "timeout",
                "cluster-addr",
                "cluster-peers",
                "leaf-servers",
                "pprof",
                "version",
                "help",
            ] {
                assert!(
                    text.contains(&format!("--{name}")),
                    "{flag}: help lacks --{name}:\n{text}"
                );
            }
        }
    }

    #[test]
    fn remove_node_with_and_without_force() {
        let cli = ok(&["-config", "n.toml", "-remove-node", "4"]);
        assert_eq!((cli.remove_node, cli.force), (Some(4), false));
        let cli = ok(&["-config", "n.toml", "-remove-node=4", "-force"]);
        assert_eq!((cli.remove_node, cli.force), (Some(4), true));
        assert!(parse_from(["harmonylite", "-force"].map(String::from)).is_err());
    }
}
