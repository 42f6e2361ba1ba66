//! Tests of the nats-server configuration reader and writer.

use super::*;

fn parse(text: &str) -> Map {
    parse_str(text, Path::new("/nonexistent/test.conf")).unwrap()
}

fn scalar(s: &str) -> Value {
    Value::Scalar(s.to_string())
}

fn map_at<'a>(map: &'a Map, key: &str) -> &'a Map {
    match map.get(key) {
        Some(Value::Map(m)) => m,
        other => panic!("`{key}` is not a map: {other:?}"),
    }
}

#[test]
fn parses_the_original_example_file() {
    let map = parse(
        "monitor_port = 8222\njetstream { store_dir = \"/tmp/nats-1/jetstream/\"  max_memory_store = 50M  max_file_store = 5G }",
    );
    assert_eq!(map.get("monitor_port"), Some(&scalar("8222")));
    let js = map_at(&map, "jetstream");
    assert_eq!(
        js.get("store_dir"),
        Some(&scalar("\"/tmp/nats-1/jetstream/\""))
    );
    assert_eq!(js.get("max_memory_store"), Some(&scalar("50M")));
    assert_eq!(js.get("max_file_store"), Some(&scalar("5G")));
    assert_eq!(js.entries().len(), 3);
}

#[test]
fn all_separator_styles_and_terminators() {
    let map = parse("a: 1\nb = 2\nc 3\nd: 4; e: 5, f: \"x\"\ng {h: 1, i = 2; j 3}\nk: {l: 1}\n");
    for (k, v) in [
        ("a", "1"),
        ("b", "2"),
        ("c", "3"),
        ("d", "4"),
        ("e", "5"),
        ("f", "\"x\""),
    ] {
        assert_eq!(map.get(k), Some(&scalar(v)), "{k}");
    }
    let g = map_at(&map, "g");
    assert_eq!(g.get("h"), Some(&scalar("1")));
    assert_eq!(g.get("i"), Some(&scalar("2")));
    assert_eq!(g.get("j"), Some(&scalar("3")));
    assert_eq!(map_at(&map, "k").get("l"), Some(&scalar("1")));
}

#[test]
fn comments_of_both_kinds_and_urls_with_double_slashes() {
    let map = parse(
        "# leading comment\n\
         // another one\n\
         listen: 127.0.0.1:4222 # trailing\n\
         url: nats://host:4222/path // trailing too\n\
         cluster {\n  # inside a map\n  routes [\n    nats://a:6222 # first\n    // between\n    nats://b:6222\n  ]\n}\n",
    );
    assert_eq!(map.get("listen"), Some(&scalar("127.0.0.1:4222")));
    assert_eq!(map.get("url"), Some(&scalar("nats://host:4222/path")));
    let routes = map_at(&map, "cluster").get("routes").unwrap();
    assert_eq!(
        routes,
        &Value::Array(vec![scalar("nats://a:6222"), scalar("nats://b:6222")])
    );
}

#[test]
fn quoted_strings_keep_hashes_slashes_and_escapes() {
    let map = parse(
        "a: \"has # hash and // slashes\"\nb: 'single # quoted'\nc: \"esc \\\" quote # x\"\n",
    );
    assert_eq!(map.get("a"), Some(&scalar("\"has # hash and // slashes\"")));
    assert_eq!(map.get("b"), Some(&scalar("'single # quoted'")));
    assert_eq!(map.get("c"), Some(&scalar("\"esc \\\" quote # x\"")));
    assert_eq!(unquote(map.get("c").unwrap()).unwrap(), "esc \" quote # x");
    assert_eq!(unquote(map.get("b").unwrap()).unwrap(), "single # quoted");
}

#[test]
fn arrays_of_maps_and_nested_arrays() {
    let map = parse(
        "authorization {\n  users = [\n    {user: alice, password: \"p#1\"}\n    {nkey: UABC}, {user: bob\n     password: two}\n  ]\n}\nlist: [1, [2, 3], {x: y}]\n",
    );
    let Some(Value::Array(users)) = map_at(&map, "authorization").get("users") else {
        panic!()
    };
    assert_eq!(users.len(), 3);
    let Value::Map(alice) = &users[0] else {
        panic!()
    };
    assert_eq!(alice.get("password"), Some(&scalar("\"p#1\"")));
    let Value::Map(bob) = &users[2] else { panic!() };
    assert_eq!(bob.get("password"), Some(&scalar("two")));
    let Some(Value::Array(list)) = map.get("list") else {
        panic!()
    };
    assert_eq!(list[1], Value::Array(vec![scalar("2"), scalar("3")]));
}

#[test]
fn variables_durations_and_blocks_stay_verbatim() {
    let map = parse(
        "TOKEN: secret\nauthorization { token: $TOKEN }\nping_interval: \"2m\"\nwrite_deadline: 10s\nbanner (\n  line one )\n  line two\n)\nafter: 1\n",
    );
    assert_eq!(
        map_at(&map, "authorization").get("token"),
        Some(&scalar("$TOKEN"))
    );
    assert_eq!(map.get("write_deadline"), Some(&scalar("10s")));
    assert_eq!(
        map.get("banner"),
        Some(&scalar("(\n  line one )\n  line two\n)"))
    );
    assert_eq!(map.get("after"), Some(&scalar("1")));
}

#[test]
fn keys_are_case_insensitive_and_later_values_win() {
    let map =
        parse("JetStream { store_dir: a }\njetstream { max_file_store: 1G }\nport: 1\nPORT: 2\n");
    assert_eq!(map.entries().len(), 2);
    let js = map_at(&map, "jetstream");
    assert_eq!(
        js.get("store_dir"),
        None,
        "a repeated key replaces the whole value, as in nats-server"
    );
    assert_eq!(js.get("max_file_store"), Some(&scalar("1G")));
    assert_eq!(map.get("port"), Some(&scalar("2")));
}

#[test]
fn includes_are_relative_to_the_including_file_and_spliced_in_place() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(
        dir.path().join("sub/users.conf"),
        "users: [ {user: a, password: b} ]\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("sub/auth.conf"),
        "authorization {\n  include users.conf\n  timeout: 2\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("main.conf"),
        "port: 4222\ninclude 'sub/auth.conf' # comment\nhttp: 8222\n",
    )
    .unwrap();
    let map = parse_file(&dir.path().join("main.conf")).unwrap();
    let keys: Vec<&str> = map.entries().iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["port", "authorization", "http"]);
    let auth = map_at(&map, "authorization");
    assert!(matches!(auth.get("users"), Some(Value::Array(u)) if u.len() == 1));
    assert_eq!(auth.get("timeout"), Some(&scalar("2")));
}

#[test]
fn include_cycles_and_missing_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.conf"), "include b.conf\n").unwrap();
    std::fs::write(dir.path().join("b.conf"), "include \"a.conf\"\n").unwrap();
    let err = parse_file(&dir.path().join("a.conf")).unwrap_err();
    assert!(err.message.contains("nested deeper"), "{err:?}");

    std::fs::write(dir.path().join("c.conf"), "x: 1\ninclude missing.conf\n").unwrap();
    let err = parse_file(&dir.path().join("c.conf")).unwrap_err();
    assert_eq!(err.line, 2);
    assert!(err.message.contains("missing.conf"), "{err:?}");
}

#[test]
fn syntax_errors_name_the_line() {
    for (text, line, needle) in [
        ("a: 1\nb {\n  c: 2\n", 4, "missing `}`"),
        ("a: 1\nb: [1, 2\n", 3, "missing `]`"),
        ("a: 1\nb:\nc: 2\n", 2, "found a new line"),
        ("a: \"open\n", 1, "unterminated"),
    ] {
        let err = parse_str(text, Path::new("x.conf")).unwrap_err();
        assert_eq!(err.line, line, "{text:?}: {err:?}");
        assert!(err.message.contains(needle), "{text:?}: {err:?}");
    }
}

#[test]
fn render_then_parse_round_trips() {
    let text = "monitor_port = 8222\n\
                jetstream { store_dir = \"/tmp/a b/\"  max_memory_store = 50M }\n\
                \"odd key\": 'v # x'\n\
                authorization { users = [ {user: a, password: \"p\\\"q\"}, {nkey: UABC} ] }\n\
                banner (\n  text\n)\n\
                list: []\nempty {}\n";
    let map = parse(text);
    let rendered = map.render();
    assert_eq!(parse(&rendered), map, "rendered:\n{rendered}");
}

#[test]
fn quote_escapes_what_nats_needs() {
    assert_eq!(quote("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
    assert_eq!(unquote(&Value::string("a\"b\\c\nd")).unwrap(), "a\"b\\c\nd");
}
