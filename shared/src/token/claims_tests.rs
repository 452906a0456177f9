use serde_json::json;

use super::*;

fn name(s: &str) -> CacheName {
    s.parse().unwrap()
}

/// From JSON text: `json!` would sort the keys, and key order is the point here.
fn access(text: &str) -> CacheAccess {
    serde_json::from_str(text).unwrap()
}

fn perms(keys: &[Permission]) -> CachePermissions {
    let mut p = CachePermissions::default();
    for k in keys {
        p.grant(*k);
    }
    p
}

use Permission::*;

#[test]
fn access_keeps_json_order_through_a_round_trip() {
    let text = r#"{"z-*":{"r":1},"a":{"w":1},"m?":{"d":1},"*":{"cd":1}}"#;
    let parsed: CacheAccess = serde_json::from_str(text).unwrap();
    let order: Vec<_> = parsed.entries().map(|(p, _)| p.as_str()).collect();
    assert_eq!(order, ["z-*", "a", "m?", "*"]);
    assert_eq!(serde_json::to_string(&parsed).unwrap(), text);
}

#[test]
fn exact_name_wins_over_earlier_glob() {
    let a = access(r#"{"cache-*": {"d": 1}, "cache-rw": {"r": 1, "w": 1}}"#);
    assert_eq!(a.permissions_for(&name("cache-rw")), perms(&[Pull, Push]));
    assert_eq!(a.permissions_for(&name("cache-x")), perms(&[Delete]));
}

#[test]
fn first_matching_glob_wins_and_nothing_merges() {
    let a = access(r#"{"all-*": {"r": 1}, "all-ci-*": {"w": 1}, "*": {"cc": 1}}"#);
    assert_eq!(a.permissions_for(&name("all-ci-abc")), perms(&[Pull]));
    assert_eq!(a.permissions_for(&name("all-x")), perms(&[Pull]));
    assert_eq!(a.permissions_for(&name("other")), perms(&[CreateCache]));
    // Reversed order, reversed outcome.
    let b = access(r#"{"all-ci-*": {"w": 1}, "all-*": {"r": 1}}"#);
    assert_eq!(b.permissions_for(&name("all-ci-abc")), perms(&[Push]));
}

#[test]
fn an_empty_exact_entry_still_wins() {
    // An exact entry granting nothing shadows a glob that grants something.
    let a = access(r#"{"*": {"r": 1}, "secret": {}}"#);
    assert!(!a.permissions_for(&name("secret")).any());
}

#[test]
fn no_match_grants_nothing() {
    let a = access(r#"{"team-*": {"r": 1}, "v?": {"w": 1}}"#);
    assert!(!a.permissions_for(&name("other")).any());
    assert!(!a.permissions_for(&name("v10")).any());
    assert_eq!(a.permissions_for(&name("v1")), perms(&[Push]));
    assert!(!CacheAccess::default().permissions_for(&name("x")).any());
}

#[test]
fn access_rejects_bad_or_duplicate_patterns() {
    assert!(serde_json::from_value::<CacheAccess>(json!({"bad pattern": {"r": 1}})).is_err());
    assert!(serde_json::from_value::<CacheAccess>(json!({"-x": {"r": 1}})).is_err());
    assert!(serde_json::from_str::<CacheAccess>(r#"{"a":{"r":1},"a":{"w":1}}"#).is_err());
    assert!(serde_json::from_value::<CacheAccess>(json!(["a"])).is_err());
}

#[test]
fn grant_merges_per_pattern_in_first_seen_order() {
    let mut a = CacheAccess::default();
    a.grant("b".parse().unwrap(), Pull);
    a.grant("a".parse().unwrap(), Push);
    a.grant("b".parse().unwrap(), Delete);
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        r#"{"b":{"r":1,"d":1},"a":{"w":1}}"#
    );
}

fn claims(value: serde_json::Value) -> Claims {
    serde_json::from_value(value).unwrap()
}

#[test]
fn attic_shaped_claims_parse() {
    let c = claims(json!({
        "sub": "meow", "exp": 4102444800u64, "nbf": 1700000000,
        "https://jwt.attic.rs/v1": {"caches": {"team-*": {"r": 1, "w": 1, "cc": 1}}}
    }));
    assert_eq!(
        (c.sub.as_str(), c.exp, c.nbf, c.iat),
        ("meow", 4102444800, Some(1700000000), None)
    );
    assert!(c.jti.is_none() && c.iss.is_none() && c.aud.is_empty());
    assert_eq!(
        c.permissions_for(&name("team-a")),
        perms(&[Pull, Push, CreateCache])
    );
}

#[test]
fn issued_at_falls_back_to_nbf_then_epoch() {
    let base = json!({"sub": "s", "exp": 10});
    let mut with_nbf = base.clone();
    with_nbf["nbf"] = json!(5);
    assert_eq!(claims(with_nbf.clone()).issued_at(), 5);
    with_nbf["iat"] = json!(7);
    assert_eq!(claims(with_nbf).issued_at(), 7);
    assert_eq!(claims(base).issued_at(), 0);
}

#[test]
fn audience_is_a_string_or_an_array() {
    let one = claims(json!({"sub": "s", "exp": 1, "aud": "a"}));
    assert_eq!(one.aud, ["a"]);
    let many = claims(json!({"sub": "s", "exp": 1, "aud": ["a", "b"]}));
    assert_eq!(many.aud, ["a", "b"]);
    assert!(serde_json::from_value::<Claims>(json!({"sub": "s", "exp": 1, "aud": 3})).is_err());
}

#[test]
fn claims_serialize_in_the_documented_shape() {
    let mut c = claims(json!({"sub": "s", "exp": 20, "nbf": 10, "iat": 10, "jti": "J"}));
    c.caches.grant("x-*".parse().unwrap(), Pull);
    assert_eq!(
        serde_json::to_string(&c).unwrap(),
        r#"{"sub":"s","exp":20,"nbf":10,"iat":10,"jti":"J","https://jwt.attic.rs/v1":{"caches":{"x-*":{"r":1}}}}"#
    );
    c.aud = vec!["a".into()];
    c.iss = Some("i".into());
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!(
        (v["aud"].clone(), v["iss"].clone()),
        (json!("a"), json!("i"))
    );
    c.aud.push("b".into());
    assert_eq!(serde_json::to_value(&c).unwrap()["aud"], json!(["a", "b"]));
    assert_eq!(
        serde_json::from_value::<Claims>(serde_json::to_value(&c).unwrap()).unwrap(),
        c
    );
}

#[test]
fn numeric_dates_and_required_claims() {
    let c = claims(json!({"sub": "s", "exp": 1700000000.75}));
    assert_eq!(c.exp, 1700000000);
    for bad in [
        json!({"sub": "s", "exp": -1}),
        json!({"sub": "s", "exp": "tomorrow"}),
        json!({"sub": "s", "exp": 1e30}),
        json!({"exp": 1}),
        json!({"sub": "s"}),
    ] {
        assert!(
            serde_json::from_value::<Claims>(bad.clone()).is_err(),
            "{bad}"
        );
    }
    let no_ns = claims(json!({"sub": "s", "exp": 1, "https://jwt.attic.rs/v1": {}}));
    assert!(no_ns.caches.is_empty());
}
