use std::{fs, path::Path};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};

use super::*;

const TOKEN_A: &str = "vq_team_a_0123456789";
const TOKEN_A2: &str = "vq_team_a_rotated_99";
const TOKEN_B: &str = "vq_team_b_0123456789";

fn bearer_headers(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    headers
}

fn tenants_with(toml: &str) -> (Tenants, Config) {
    let config = Config::for_tests_with("http://127.0.0.1:9", "vq_default_key", toml, |_| {});
    let base = BaseClients {
        valiqor: UpstreamClient::new(&config.valiqor).unwrap(),
        arize: None,
    };
    (Tenants::new(&config, base).unwrap(), config)
}

fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
}

#[test]
fn mode_none_makes_every_caller_the_default_tenant() {
    let (tenants, _) = tenants_with("");
    for headers in [HeaderMap::new(), bearer_headers("anything-at-all-here")] {
        let tenant = tenants.authenticate(&headers).unwrap();
        assert_eq!(tenant.name.as_str(), "default");
    }
}

#[test]
fn tokens_name_their_tenant_and_unknown_or_missing_ones_are_refused() {
    let digest_b = {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(TOKEN_B.as_bytes());
        digest.iter().fold(String::new(), |mut hex, b| {
            use std::fmt::Write as _;
            let _ = write!(hex, "{b:02x}");
            hex
        })
    };
    let (tenants, _) = tenants_with(&format!(
        r#"
        [auth]
        mode = "tokens"
        [[tenants]]
        name = "team-a"
        tokens = ["{TOKEN_A}", "{TOKEN_A2}"]
        valiqor_api_key = "vq_key_of_a"
        [[tenants]]
        name = "team-b"
        tokens = ["sha256:{digest_b}"]
        "#
    ));
    for token in [TOKEN_A, TOKEN_A2] {
        assert_eq!(
            tenants
                .authenticate(&bearer_headers(token))
                .unwrap()
                .name
                .as_str(),
            "team-a"
        );
    }
    let b = tenants.authenticate(&bearer_headers(TOKEN_B)).unwrap();
    assert_eq!(b.name.as_str(), "team-b");
    // team-b has no key of its own: the default key's credential.
    let default = tenants.by_name(&TenantName::default_tenant()).unwrap();
    assert_eq!(b.upstream.credential(), default.upstream.credential());
    let a = tenants
        .by_name(&TenantName::parse("team-a").unwrap())
        .unwrap();
    assert_ne!(a.upstream.credential(), default.upstream.credential());

    assert_eq!(
        tenants.authenticate(&HeaderMap::new()).unwrap_err(),
        AuthError::Missing
    );
    assert_eq!(
        tenants
            .authenticate(&bearer_headers("vq_not_a_token_of_anyone"))
            .unwrap_err(),
        AuthError::Unknown
    );
    let mut basic = HeaderMap::new();
    basic.insert(AUTHORIZATION, HeaderValue::from_static("Basic dnE6eA=="));
    assert_eq!(
        tenants.authenticate(&basic).unwrap_err(),
        AuthError::Missing
    );
    assert!(
        tenants
            .by_name(&TenantName::parse("team-c").unwrap())
            .is_none()
    );
}

#[test]
fn a_reload_applies_a_valid_file_and_keeps_the_old_set_when_the_new_one_is_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tenants.toml");
    let key_file = dir.path().join("team-a-key");
    write(&key_file, "vq_key_of_a_v1\n");
    write(
        &file,
        &format!(
            "[[tenants]]\nname = \"team-a\"\ntokens = [\"{TOKEN_A}\"]\nvaliqor_api_key = \"file:{}\"\nrequests_per_second = 1\nburst = 1\n",
            key_file.display()
        ),
    );
    let (tenants, _) = tenants_with(&format!(
        "[auth]\nmode = \"tokens\"\ntenants_file = \"{}\"\n",
        file.display()
    ));
    let mut watched = tenants.watched_files();
    watched.sort();
    assert_eq!(watched, {
        let mut expected = vec![file.clone(), key_file.clone()];
        expected.sort();
        expected
    });
    let a = tenants.authenticate(&bearer_headers(TOKEN_A)).unwrap();
    let credential_v1 = a.upstream.credential();
    // The one-request burst is spent here; the bucket must survive an unrelated reload.
    assert!(a.check_rate().is_ok());
    assert!(a.check_rate().is_err());

    assert!(matches!(tenants.reload(), ReloadOutcome::Unchanged));

    // A new key file value and a second token: applied.
    write(&key_file, "vq_key_of_a_v2\n");
    write(
        &file,
        &format!(
            "[[tenants]]\nname = \"team-a\"\ntokens = [\"{TOKEN_A}\", \"{TOKEN_A2}\"]\nvaliqor_api_key = \"file:{}\"\nrequests_per_second = 1\nburst = 1\n",
            key_file.display()
        ),
    );
    assert!(matches!(tenants.reload(), ReloadOutcome::Applied));
    let a = tenants.authenticate(&bearer_headers(TOKEN_A2)).unwrap();
    assert_ne!(a.upstream.credential(), credential_v1);
    assert!(
        a.check_rate().is_err(),
        "the rate bucket was reset by a reload"
    );
    // The redactor now knows the new key.
    let scrubbed = a
        .upstream
        .scrub(Bytes::from_static(b"{\"echo\": \"vq_key_of_a_v2\"}"));
    assert_eq!(&scrubbed[..], b"{\"echo\": \"*****\"}");

    // An invalid file (a short token, a bad name): rejected, every problem named, old set kept.
    write(
        &file,
        "[[tenants]]\nname = \"Team A\"\ntokens = [\"short\"]\n",
    );
    match tenants.reload() {
        ReloadOutcome::Rejected(error) => {
            assert_eq!(error.problems.len(), 2, "{:?}", error.problems);
            assert!(
                error.problems.iter().all(|p| !p.contains("short\"")),
                "{:?}",
                error.problems
            );
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert!(tenants.authenticate(&bearer_headers(TOKEN_A2)).is_ok());

    // A removed tenant is gone after the next valid reload.
    write(&file, "");
    assert!(matches!(tenants.reload(), ReloadOutcome::Applied));
    assert_eq!(
        tenants.authenticate(&bearer_headers(TOKEN_A)).unwrap_err(),
        AuthError::Unknown
    );
}

#[test]
fn a_token_shared_by_two_tenants_is_a_configuration_error() {
    let error = Config::load(&crate::config::Sources {
        toml: Some(format!(
            "[valiqor]\napi_key = \"vq_default\"\n[auth]\nmode = \"tokens\"\n[[tenants]]\nname = \"a\"\ntokens = [\"{TOKEN_A}\"]\n[[tenants]]\nname = \"b\"\ntokens = [\"{TOKEN_A}\"]\n[[tenants]]\nname = \"a\"\ntokens = [\"{TOKEN_B}\"]\n"
        )),
        ..Default::default()
    })
    .unwrap_err();
    let text = error.problems.join("\n");
    assert!(text.contains("also a token of tenant \"a\""), "{text}");
    assert!(text.contains("defined twice"), "{text}");
    assert!(
        !text.contains(TOKEN_A),
        "a problem quotes the token: {text}"
    );
}
