//! The loader against `config/site.toml`, the bad fixtures and generated mistakes.

use super::exposure::{exposure, ExposureWarning};
use super::*;

const GOOD: &str = include_str!("../../config/site.toml");

fn parse(text: &str) -> Result<Site, ConfigError> {
    Site::parse(Path::new("site.toml"), text)
}

fn err(text: &str) -> String {
    parse(text)
        .expect_err("config should be refused")
        .to_string()
}

#[test]
fn example_site_loads_with_units() {
    let site = parse(GOOD).expect("config/site.toml is valid");
    assert_eq!(site.hubs.len(), 2);
    assert_eq!(site.cms[0].nodes.len(), 2);
    assert_eq!(site.max_message_size, 10_000_000);
    assert_eq!(site.store_cache_size, 64 * 1024 * 1024);
    assert_eq!(site.in_flow_delay, Duration::from_secs(1));
    assert_eq!(site.node_connect_timeout, Duration::from_secs(2));
    assert_eq!(site.max_dumpster_size_per_storage_group, 18_000_000);
    assert_eq!(site.max_dumpster_time, Duration::from_secs(7 * 86_400));
    assert_eq!(site.cms[0].log_file_size, 1 << 20);
    assert_eq!(
        site.cms[0].auto_database_mount_dial,
        AutoDatabaseMountDial::GoodAvailability
    );
    let r = site
        .route("Alice@Example.TEST")
        .expect("alice is a mailbox");
    assert_eq!(r.storage_group, "SG1");
    assert!(site.route("nobody@example.test").is_none());
    assert!(site.is_accepted_domain("nobody@EXAMPLE.test"));
    assert!(!site.is_accepted_domain("x@elsewhere.test"));
}

#[test]
fn hosted_domain_routes_every_address() {
    let text = GOOD.replace(
        "mailboxes = [\"alice@example.test\", \"bob@example.test\"]",
        "mailboxes = [\"alice@example.test\", \"bob@example.test\"]\ndomains = [\"hosted.test\"]",
    );
    let site = parse(&text).unwrap();
    assert_eq!(
        site.route("anyone@hosted.test").unwrap().storage_group,
        "SG1"
    );
    assert!(site.is_accepted_domain("anyone@hosted.test"));
}

#[test]
fn unknown_key_names_key_and_line() {
    let text = GOOD.replacen("[site]\n", "[site]\nmax_dumpster_tme = \"1d\"\n", 1);
    let e = err(&text);
    assert!(e.contains("max_dumpster_tme"), "{e}");
    let line = text
        .lines()
        .position(|l| l.starts_with("max_dumpster_tme"))
        .unwrap()
        + 1;
    assert!(e.starts_with(&format!("site.toml:{line}:")), "{e}");
}

#[test]
fn sizes_parse_as_in_the_site_file() {
    let size = |s: &str| s.parse::<Size>().map(|s| s.0);
    assert_eq!(size("4KiB"), Ok(4096));
    assert_eq!(size(" 64KiB "), Ok(65_536));
    assert_eq!(size("18MB"), Ok(18_000_000));
    assert_eq!(size("4096"), Ok(4096));
    assert!(size("lots").unwrap_err().contains("not a size"));
}

#[test]
fn bad_units_are_explained() {
    let e = err(&GOOD.replace(
        "max_dumpster_time = \"7d\"",
        "max_dumpster_time = \"7 fortnights\"",
    ));
    assert!(e.contains("not a duration"), "{e}");
    let e = err(&GOOD.replace(
        "max_dumpster_size_per_storage_group = \"18MB\"",
        "max_dumpster_size_per_storage_group = \"lots\"",
    ));
    assert!(e.contains("not a size"), "{e}");
}

#[test]
fn duplicate_names_and_double_homed_mailboxes_are_refused() {
    let e = err(&GOOD.replace("name = \"hub2\"", "name = \"hub1\""));
    assert!(e.contains("`hub1` is already defined"), "{e}");
    let two_sgs = format!(
        "{GOOD}\n[[cms.storage_group]]\nname = \"SG2\"\nmailboxes = [\"ALICE@example.test\"]\n"
    );
    let e = err(&two_sgs);
    assert!(e.contains("cms.storage_group.mailboxes"), "{e}");
    assert!(e.contains("already defined in SG1"), "{e}");
    let line = two_sgs.lines().count();
    assert!(e.starts_with(&format!("site.toml:{line}:")), "{e}");
}

#[test]
fn node_in_two_cms_is_refused() {
    let second = "\n[[cms]]\nname = \"cms2\"\nwitness = \"w2\"\n[[cms.node]]\nname = \"node1\"\nsmtp = \"127.0.0.1:1\"\nadmin = \"127.0.0.1:2\"\n[[cms.node]]\nname = \"node9\"\nsmtp = \"127.0.0.1:3\"\nadmin = \"127.0.0.1:4\"\n";
    let e = err(&format!("{GOOD}{second}"));
    assert!(e.contains("`node1` is already defined in cms1"), "{e}");
}

#[test]
fn bad_config_fixtures_name_the_problem() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("fixtures/configs") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("fixture");
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no `# expect:` line", path.display()));
        let e = err(&text);
        assert!(e.contains(expect), "{}: {e}", path.display());
        seen += 1;
    }
    assert!(seen >= 5, "only {seen} bad config fixtures");
}

#[test]
fn smtp_edge_keys_default_and_bad_values_name_the_key() {
    let keys = [
        "max_connections_per_client",
        "connection_limit_exceptions",
        "data_timeout",
        "bare_newline",
    ];
    let text = GOOD
        .lines()
        .filter(|l| !keys.iter().any(|k| l.starts_with(k)))
        .collect::<Vec<_>>()
        .join("\n");
    let site = parse(&text).expect("defaults");
    assert_eq!(site.max_connections_per_client, 50);
    assert_eq!(site.data_timeout, Duration::from_secs(180));
    assert_eq!(site.bare_newline, BareNewline::Normalize);
    for ip in ["127.0.0.1", "127.9.9.9", "::1"] {
        let ip: std::net::IpAddr = ip.parse().expect("an address");
        assert!(
            site.connection_limit_exceptions
                .iter()
                .any(|n| n.contains(&ip)),
            "{ip} is exempt by default"
        );
    }
    let site = parse(&GOOD.replace("bare_newline = \"normalize\"", "bare_newline = \"reject\""))
        .expect("reject is a policy");
    assert_eq!(site.bare_newline, BareNewline::Reject);

    for (from, to, key) in [
        (
            "bare_newline = \"normalize\"",
            "bare_newline = \"strip\"",
            "bare_newline",
        ),
        (
            "connection_limit_exceptions = [\"127.0.0.0/8\"",
            "connection_limit_exceptions = [\"127.0.0.0/33\"",
            "connection_limit_exceptions",
        ),
        (
            "data_timeout = \"3m\"",
            "data_timeout = \"soon\"",
            "data_timeout",
        ),
        (
            "max_connections_per_client = 50",
            "max_connections_per_client = 0",
            "max_connections_per_client",
        ),
    ] {
        let bad = GOOD.replace(from, to);
        assert_ne!(bad, GOOD, "{from} is in config/site.toml");
        let e = err(&bad);
        assert!(e.contains(key), "{key}: {e}");
    }
}

#[test]
fn resubmit_rate_and_dedup_retention_default_and_are_checked_at_their_line() {
    let text = GOOD
        .lines()
        .filter(|l| !l.starts_with("resubmit_rate") && !l.starts_with("dedup_retention"))
        .collect::<Vec<_>>()
        .join("\n");
    let site = parse(&text).expect("defaults");
    assert_eq!(site.resubmit_rate, 500);
    assert_eq!(site.dedup_retention, Duration::from_secs(14 * 86_400));
    let line_of = |text: &str, key: &str| {
        text.lines()
            .position(|l| l.starts_with(key))
            .expect("key in text")
            + 1
    };

    let zero = GOOD.replace("resubmit_rate = 500", "resubmit_rate = 0");
    let e = err(&zero);
    let line = line_of(&zero, "resubmit_rate");
    assert!(
        e.starts_with(&format!("site.toml:{line}: site.resubmit_rate:")),
        "{e}"
    );

    let never = GOOD.replace(
        "node_connect_timeout = \"2s\"",
        "node_connect_timeout = \"0s\"",
    );
    let e = err(&never);
    let line = line_of(&never, "node_connect_timeout");
    assert!(
        e.starts_with(&format!(
            "site.toml:{line}: site.node_connect_timeout: must be more than 0s"
        )),
        "{e}"
    );

    let short = GOOD.replace("dedup_retention = \"14d\"", "dedup_retention = \"6d\"");
    let e = err(&short);
    let line = line_of(&short, "dedup_retention");
    assert!(
        e.starts_with(&format!("site.toml:{line}: site.dedup_retention:")),
        "{e}"
    );
    assert!(e.contains("max_dumpster_time (7days; it is 6days)"), "{e}");
    // Equal to max_dumpster_time is enough; a longer dumpster needs a longer retention.
    let equal = GOOD.replace("dedup_retention = \"14d\"", "dedup_retention = \"7d\"");
    assert_eq!(
        parse(&equal).expect("equal").dedup_retention,
        Duration::from_secs(7 * 86_400)
    );
    let e = err(&text.replace("max_dumpster_time = \"7d\"", "max_dumpster_time = \"15d\""));
    assert!(e.contains("site.dedup_retention"), "{e}");
}

#[test]
fn tls_keys_resolve_beside_the_config_and_hubs_and_nodes_may_override_them() {
    let text = GOOD
        .replacen(
            "[site]\n",
            "[site]\ntls_certificate = \"tls/site.crt\"\ntls_private_key = \"/etc/hubrelay/site.key\"\n",
            1,
        )
        .replacen(
            "name = \"hub2\"\n",
            "name = \"hub2\"\ntls_certificate = \"hub2.crt\"\ntls_private_key = \"hub2.key\"\nrequire_tls = true\n",
            1,
        );
    let site = Site::parse(Path::new("/srv/site/site.toml"), &text).expect("valid");
    let site_files = TlsFiles {
        certificate: PathBuf::from("/srv/site/tls/site.crt"),
        private_key: PathBuf::from("/etc/hubrelay/site.key"),
    };
    assert_eq!(site.hubs[0].tls.as_ref(), Some(&site_files));
    assert!(!site.hubs[0].require_tls);
    let hub2 = site.hubs[1].tls.as_ref().expect("hub2 has its own");
    assert_eq!(hub2.certificate, PathBuf::from("/srv/site/hub2.crt"));
    assert!(site.hubs[1].require_tls);
    assert_eq!(site.cms[0].nodes[0].tls.as_ref(), Some(&site_files));
    assert_eq!(site.delivery_tls, DeliveryTls::Opportunistic);
    assert_eq!(site.tls_ca, None);

    let plain = parse(GOOD).expect("valid");
    assert!(plain.hubs.iter().all(|h| h.tls.is_none() && !h.require_tls));
    assert!(plain.cms[0].nodes.iter().all(|n| n.tls.is_none()));
}

#[test]
fn tls_mistakes_name_their_key() {
    let with = |lines: &str| GOOD.replacen("[site]\n", &format!("[site]\n{lines}\n"), 1);
    let e = err(&with("tls_certificate = \"a.crt\""));
    assert!(e.contains(": site.tls_private_key: missing"), "{e}");
    let e = err(&with("tls_private_key = \"a.key\""));
    assert!(e.contains(": site.tls_certificate: missing"), "{e}");
    let e = err(&with("require_tls = true"));
    assert!(
        e.contains(": site.require_tls: require_tls needs a certificate"),
        "{e}"
    );
    let e = err(&with("delivery_tls = \"required\""));
    assert!(e.contains(": site.delivery_tls: "), "{e}");
    assert!(e.contains("tls_ca"), "{e}");
    let e = err(&with("delivery_tls = \"sometimes\""));
    assert!(e.contains("unknown variant"), "{e}");
    let site = parse(&with("delivery_tls = \"required\"\ntls_ca = \"ca.pem\""))
        .expect("required with a CA");
    assert_eq!(site.delivery_tls, DeliveryTls::Required);
    assert_eq!(site.tls_ca, Some(PathBuf::from("ca.pem")));
    let e = err(&with(
        "tls_certificate = \"a.crt\"\ntls_private_key = \"a.key\"\ndelivery_tls = \"off\"\nrequire_tls = true",
    ));
    assert!(
        e.contains(": site.require_tls: hubs deliver in clear text"),
        "{e}"
    );
    let e = err(&with("admin_tls = true"));
    assert!(
        e.contains(": site.admin_tls: ") && e.contains("tls_ca"),
        "{e}"
    );
    let e = err(&with("admin_tls = true\ntls_ca = \"ca.pem\""));
    assert!(
        e.contains(": site.admin_tls: every role needs a certificate"),
        "{e}"
    );
    let site = parse(&with(
        "admin_tls = true\ntls_ca = \"ca.pem\"\ntls_certificate = \"a.crt\"\ntls_private_key = \"a.key\"",
    ))
    .expect("admin_tls with certificates and a CA");
    assert_eq!(site.admin_tls, AdminTls::On);
    assert_eq!(parse(GOOD).expect("valid").admin_tls, AdminTls::Off);
    let e = err(&with("admin_tls = \"maybe\""));
    assert!(
        e.contains("site.admin_tls") && e.contains("not one of false, true, \"mutual\""),
        "{e}"
    );
}

#[test]
fn mutual_tls_needs_a_ca_a_certificate_for_every_role_and_the_operators() {
    let with = |lines: &str| GOOD.replacen("[site]\n", &format!("[site]\n{lines}\n"), 1);
    let pair = "tls_certificate = \"a.crt\"\ntls_private_key = \"a.key\"";
    let e = err(&with("delivery_tls = \"mutual\""));
    assert!(
        e.contains(": site.delivery_tls: ") && e.contains("tls_ca"),
        "{e}"
    );
    let e = err(&with("delivery_tls = \"mutual\"\ntls_ca = \"ca.pem\""));
    assert!(
        e.contains(": site.delivery_tls: \"mutual\": every hub and node presents a certificate"),
        "{e}"
    );
    let site = parse(&with(&format!(
        "delivery_tls = \"mutual\"\ntls_ca = \"ca.pem\"\n{pair}"
    )))
    .expect("mutual with a CA and certificates");
    assert_eq!(site.delivery_tls, DeliveryTls::Mutual);
    // Nodes take nothing in clear text, whatever require_tls says elsewhere.
    assert!(site.cms[0].nodes.iter().all(|n| n.require_tls));
    assert!(site.hubs.iter().all(|h| !h.require_tls));
    let e = err(&with(&format!(
        "delivery_tls = \"mutual\"\ntls_ca = \"ca.pem\"\n{pair}"
    ))
    .replacen(
        "[[cms.node]]\nname = \"node1\"",
        "[[cms.node]]\nname = \"node1\"\nrequire_tls = false",
        1,
    ));
    assert!(
        e.contains(": cms.node.require_tls: delivery_tls = \"mutual\""),
        "{e}"
    );

    let e = err(&with(&format!(
        "admin_tls = \"mutual\"\ntls_ca = \"ca.pem\"\n{pair}"
    )));
    assert!(
        e.contains(": site.admin_client_certificate: missing: with admin_tls = \"mutual\""),
        "{e}"
    );
    let e = err(&with(&format!(
        "admin_tls = \"mutual\"\ntls_ca = \"ca.pem\"\n{pair}\nadmin_client_certificate = \"op.pem\""
    )));
    assert!(
        e.contains(": site.admin_client_private_key: missing"),
        "{e}"
    );
    let site = parse(&with(&format!(
        "admin_tls = \"mutual\"\ntls_ca = \"ca.pem\"\n{pair}\nadmin_client_certificate = \"op.pem\"\nadmin_client_private_key = \"op.key\""
    )))
    .expect("mutual admin with the operator's pair");
    assert_eq!(site.admin_tls, AdminTls::Mutual);
    assert_eq!(
        site.admin_client.map(|f| f.certificate),
        Some(PathBuf::from("op.pem"))
    );
}

#[test]
fn missing_token_and_bad_address() {
    let e = err(&GOOD.replace("admin_token = \"change-me\"", ""));
    assert!(e.contains("site.admin_token"), "{e}");
    let e = err(&GOOD.replace("\"bob@example.test\"", "\"bob\""));
    assert!(e.contains("not a mailbox address"), "{e}");
}

#[test]
fn the_example_token_beyond_loopback_refuses_to_start() {
    let token_line = GOOD
        .lines()
        .position(|l| l.starts_with("admin_token = "))
        .expect("the example has admin_token")
        + 1;
    for (from, to, role) in [
        (
            "admin = \"127.0.0.1:8025\"",
            "admin = \"0.0.0.0:8025\"",
            "hub1",
        ),
        (
            "admin = \"127.0.0.1:8602\"",
            "admin = \"192.0.2.7:8602\"",
            "node2",
        ),
        (
            "admin = \"127.0.0.1:8026\"",
            "admin = \"[::]:8026\"",
            "hub2",
        ),
    ] {
        let e = err(&GOOD.replace(from, to));
        assert!(
            e.contains(&format!(
                "site.toml:{token_line}: site.admin_token: is the example token"
            )) && e.contains(&format!(
                "{role}'s admin API listens on {}",
                &to[9..to.len() - 1]
            )),
            "{e}"
        );
    }
    // Its own secret beyond loopback starts (with a warning); the example token on loopback too.
    let own = GOOD
        .replace("admin = \"127.0.0.1:8025\"", "admin = \"0.0.0.0:8025\"")
        .replace("\"change-me\"", "\"s3cret-of-our-own\"");
    let site = parse(&own).expect("a token of its own");
    assert_eq!(
        exposure(&site),
        vec![ExposureWarning::AdminOverHttp {
            role: "hub1".into(),
            admin: "0.0.0.0:8025".parse().unwrap(),
        }]
    );
    assert_eq!(exposure(&parse(GOOD).expect("valid")), vec![]);
}

#[test]
fn the_example_token_in_a_file_is_refused_as_well() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "change-me\n").unwrap();
    let text = GOOD
        .replace(
            "admin_token = \"change-me\"",
            "admin_token_file = \"token\"",
        )
        .replace("admin = \"127.0.0.1:8601\"", "admin = \"0.0.0.0:8601\"");
    let e = Site::parse(&dir.path().join("site.toml"), &text)
        .expect_err("the example token from a file")
        .to_string();
    assert!(e.contains("site.admin_token: is the example token"), "{e}");
    assert!(
        e.contains("node1's admin API listens on 0.0.0.0:8601"),
        "{e}"
    );
}

#[test]
fn nodes_beyond_loopback_without_verified_tls_are_reported() {
    let text = GOOD
        .replace("smtp = \"127.0.0.1:2601\"", "smtp = \"10.1.2.3:2601\"")
        .replace("\"change-me\"", "\"s3cret-of-our-own\"");
    let site = parse(&text).expect("valid");
    let w = exposure(&site);
    assert_eq!(
        w,
        vec![ExposureWarning::ClearTextDelivery {
            node: "node1".into(),
            smtp: "10.1.2.3:2601".parse().unwrap(),
            delivery_tls: DeliveryTls::Opportunistic,
        }]
    );
    assert!(w[0].to_string().contains("delivery_tls = \"required\""));
    let required = text.replacen(
        "[site]\n",
        "[site]\ndelivery_tls = \"required\"\ntls_ca = \"ca.pem\"\n",
        1,
    );
    assert_eq!(exposure(&parse(&required).expect("valid")), vec![]);
}

mod props {
    use proptest::prelude::*;

    use super::{parse, GOOD};
    use crate::config::ConfigError;

    /// Each `key = value` line of the example, by index, with its key.
    fn key_lines() -> Vec<(usize, String)> {
        GOOD.lines()
            .enumerate()
            .filter_map(|(i, l)| {
                let (key, _) = l.split_once(" = ")?;
                (!l.starts_with('#')).then(|| (i, key.trim().to_string()))
            })
            .collect()
    }

    /// The char boundary at or before `i` in the example.
    fn char_boundary(mut i: usize) -> usize {
        while !GOOD.is_char_boundary(i) {
            i -= 1;
        }
        i
    }

    /// Well-formed TOML values of every type; a syntax error (which may surface lines
    /// later, as an unclosed array does) is covered by `no_text_makes_the_loader_panic`.
    fn wrong_value() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "\"\"",
                "0",
                "-1",
                "true",
                "[]",
                "{}",
                "1.5",
                "\"garbage\"",
                "\"-5m\"",
                "\"99999999999999999999TB\"",
                "[\"\"]",
                "\"127.0.0.1\"",
                "\"0d\"",
                "18446744073709551616",
                "\"Lossless\"",
            ])
            .prop_map(str::to_string),
            any::<i64>().prop_map(|n| n.to_string()),
            "\"[ -!#-\\[\\]-~]{0,12}\"",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn every_error_names_the_key_it_is_about(
            which in any::<prop::sample::Index>(),
            value in wrong_value(),
        ) {
            let lines = key_lines();
            let (at, key) = &lines[which.index(lines.len())];
            let text: Vec<String> = GOOD
                .lines()
                .enumerate()
                .map(|(i, l)| if i == *at { format!("{key} = {value}") } else { l.to_string() })
                .collect();
            if let Err(e) = parse(&text.join("\n")) {
                let ConfigError::Invalid { key: named, .. } = &e else {
                    return Err(TestCaseError::fail(format!("not located: {e}")));
                };
                prop_assert!(named.ends_with(key.as_str()), "{} = {}: {}", key, value, e);
            }
        }

        #[test]
        fn no_text_makes_the_loader_panic(
            from in any::<prop::sample::Index>(),
            len in 0usize..40,
            junk in "[ -~\n\\[\\]=\"]{0,40}",
        ) {
            let start = char_boundary(from.index(GOOD.len()));
            let end = char_boundary((start + len).min(GOOD.len()));
            let text = format!("{}{junk}{}", &GOOD[..start], &GOOD[end..]);
            let _ = parse(&text);
        }
    }
}

#[test]
fn log_truncation_keys_default_and_a_backlog_is_never_below_two_generations() {
    let site = parse(GOOD).expect("good");
    assert_eq!(
        (site.cms[0].max_log_backlog, site.cms[0].log_tail),
        (1 << 30, 8)
    );
    let unset = GOOD
        .lines()
        .filter(|l| !l.starts_with("max_log_backlog") && !l.starts_with("log_tail"))
        .collect::<Vec<_>>()
        .join("\n");
    let site = parse(&unset).expect("defaults");
    assert_eq!(
        (site.cms[0].max_log_backlog, site.cms[0].log_tail),
        (1 << 30, 8)
    );
    // Huge generations raise the default rather than fail on a key nobody set.
    let big = unset.replace("log_file_size = \"1MiB\"", "log_file_size = \"1GiB\"");
    assert_eq!(parse(&big).expect("big").cms[0].max_log_backlog, 2 << 30);
    let small = GOOD.replace("max_log_backlog = \"1GiB\"", "max_log_backlog = \"1MiB\"");
    assert_eq!(
        parse(&small).expect("small").cms[0].max_log_backlog,
        2 << 20
    );
}

/// The example site with its `witness` line replaced by `lines`.
fn with_witness(lines: &str) -> String {
    let at = GOOD
        .find("witness = ")
        .expect("the example names a witness");
    let end = at + GOOD[at..].find('\n').expect("line end");
    format!("{}{lines}{}", &GOOD[..at], &GOOD[end..])
}

#[test]
fn an_etcd_witness_names_its_endpoints_prefix_and_files() {
    let site = parse(&with_witness(
        "witness = \"etcds://etcd1.example.net:2379, etcd2.example.net:2379/hubrelay/cms1/\"\nwitness_tls_ca = \"ca.pem\"\nwitness_tls_certificate = \"node.pem\"\nwitness_tls_private_key = \"node.key\"\nwitness_user = \"hubrelay\"\nwitness_password_file = \"etcd.pass\"",
    ))
    .expect("valid");
    let WitnessConfig::Etcd(e) = &site.cms[0].witness else {
        panic!("an etcd witness: {:?}", site.cms[0].witness);
    };
    assert_eq!(
        e.endpoints,
        [
            "https://etcd1.example.net:2379",
            "https://etcd2.example.net:2379"
        ]
    );
    assert_eq!(e.prefix, "/hubrelay/cms1");
    assert_eq!(e.tls_ca.as_deref(), Some(Path::new("ca.pem")));
    assert_eq!(
        e.tls_client.as_ref().map(|t| t.private_key.clone()),
        Some(PathBuf::from("node.key"))
    );
    assert_eq!(e.user.as_deref(), Some("hubrelay"));
    assert_eq!(site.cms[0].witness.kind(), "EtcdWitness");
    let plain = parse(&with_witness("witness = \"etcd://[::1]:2379/w\"")).expect("valid");
    assert!(
        matches!(&plain.cms[0].witness, WitnessConfig::Etcd(e) if e.endpoints == ["http://[::1]:2379"])
    );
    let share = parse(&with_witness("witness = \"/mnt/witness/cms1\"")).expect("valid");
    assert_eq!(
        share.cms[0].witness,
        WitnessConfig::Share(PathBuf::from("/mnt/witness/cms1"))
    );
}

#[test]
fn a_wrong_etcd_witness_is_refused_naming_the_key() {
    for (lines, key, says) in [
        ("witness = \"etcd://etcd1:2379\"", "cms.witness", "names no key prefix"),
        ("witness = \"etcd://etcd1/w\"", "cms.witness", "is not host:port"),
        ("witness = \"etcd://a:1,,b:2/w\"", "cms.witness", "is not host:port"),
        ("witness = \"http://etcd1:2379/w\"", "cms.witness", "a witness is a directory"),
        ("witness = \"etcds://etcd1:2379/w\"", "cms.witness_tls_ca", "missing"),
        (
            "witness = \"etcd://etcd1:2379/w\"\nwitness_tls_ca = \"ca.pem\"",
            "cms.witness",
            "need an etcds:// witness",
        ),
        (
            "witness = \"etcds://etcd1:2379/w\"\nwitness_tls_ca = \"ca.pem\"\nwitness_tls_certificate = \"c.pem\"",
            "cms.witness_tls_private_key",
            "missing",
        ),
        (
            "witness = \"etcd://etcd1:2379/w\"\nwitness_user = \"u\"",
            "cms.witness_password_file",
            "missing",
        ),
        (
            "witness = \"witness/cms1\"\nwitness_user = \"u\"",
            "cms.witness",
            "for an etcd witness only",
        ),
    ] {
        let e = err(&with_witness(lines));
        assert!(e.contains(key) && e.contains(says), "{lines}: {e}");
    }
}

proptest::proptest! {
    /// `admin_tls` takes the booleans of earlier releases and the word "mutual", and any other
    /// value is refused with the key named, never read as a weaker setting.
    #[test]
    fn admin_tls_takes_only_its_three_values(word in "[a-z\\\"]{0,12}", flag: bool) {
        let tls = "tls_ca = \"ca.pem\"\ntls_certificate = \"a.crt\"\ntls_private_key = \"a.key\"\nadmin_client_certificate = \"o.pem\"\nadmin_client_private_key = \"o.key\"";
        let with = |value: &str| GOOD.replacen("[site]\n", &format!("[site]\n{tls}\nadmin_tls = {value}\n"), 1);
        let site = parse(&with(&flag.to_string())).expect("a boolean is taken");
        proptest::prop_assert_eq!(site.admin_tls, if flag { AdminTls::On } else { AdminTls::Off });
        let quoted = format!("{:?}", word);
        match parse(&with(&quoted)) {
            Ok(site) => {
                proptest::prop_assert_eq!(word.as_str(), "mutual");
                proptest::prop_assert_eq!(site.admin_tls, AdminTls::Mutual);
            }
            Err(e) => {
                let e = e.to_string();
                proptest::prop_assert!(word == "mutual" || e.contains("site.admin_tls"), "{}", e);
            }
        }
    }
}
