//! Interoperability of `webhooks::signing` with the reference Python package `standardwebhooks`:
//! random messages (unicode bodies, two-secret rotation, tampered copies) are signed here and
//! verified by `tests/webhook_signature.py`.
//!
//! The Python half runs only when `WEBHOOK_VERIFY_PYTHON` names a Python interpreter with
//! `standardwebhooks` installed; without the variable the test checks the Rust side alone and
//! prints a note. With the variable set, a Python that cannot run the script fails the test.
//!
//! ```text
//! python3 -m venv /tmp/swh && /tmp/swh/bin/pip install standardwebhooks
//! WEBHOOK_VERIFY_PYTHON=/tmp/swh/bin/python cargo test --test webhook_signing
//! ```
use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::{SystemTime, UNIX_EPOCH},
};

use evalgate::webhooks::signing::{SigningSecret, new_message_id, sign, verify};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use serde_json::json;

const MESSAGES: usize = 20;
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/webhook_signature.py");

/// Characters that stress the signed content: multi-byte UTF-8, the `.` separator, spaces,
/// quotes, escapes, control characters.
const ALPHABET: &[&str] = &[
    "a",
    "Z",
    "0",
    ".",
    " ",
    "\"",
    "\\",
    "\n",
    "\t",
    "\u{0}",
    "é",
    "ß",
    "✓",
    "日本",
    "語",
    "🦀",
    "👩‍👩‍👧",
    "\u{202e}",
    "\u{fffd}",
    "{",
    "}",
    ":",
    ",",
    "v1,",
    "whsec_",
];

#[expect(
    clippy::disallowed_methods,
    reason = "an opt-in test knob, set in CI, not service configuration"
)]
fn python() -> Option<String> {
    std::env::var("WEBHOOK_VERIFY_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
}

fn random_body(rng: &mut StdRng) -> String {
    let len = rng.random_range(0..200);
    let text: String = (0..len)
        .map(|_| *ALPHABET.choose(rng).unwrap_or(&"a"))
        .collect();
    // Half the bodies are JSON, as real deliveries are; the rest are arbitrary text.
    if rng.random_bool(0.5) {
        json!({ "type": "job.completed", "job_id": new_message_id(), "note": text }).to_string()
    } else {
        text
    }
}

/// The secret's text form, with or without the `whsec_` prefix.
fn text_form(text: &str, prefixed: bool) -> String {
    if prefixed {
        text.to_owned()
    } else {
        text.trim_start_matches("whsec_").to_owned()
    }
}

#[test]
fn signatures_verify_with_the_reference_python_package() {
    let mut rng = StdRng::seed_from_u64(0x5747_4854);
    let (old, old_text) = SigningSecret::generate();
    let (new, new_text) = SigningSecret::generate();
    let (_, stranger_text) = SigningSecret::generate();
    // The reference verifier refuses timestamps more than 5 minutes from its clock.
    let now = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();

    let mut lines = Vec::new();
    let (mut valid, mut invalid) = (0, 0);
    for i in 0..MESSAGES {
        let id = new_message_id();
        let body = random_body(&mut rng);
        let header = sign(&[old.clone(), new.clone()], &id, now, body.as_bytes());
        assert_eq!(header.split(' ').count(), 2, "{header}");
        assert!(verify(&old, &id, now, body.as_bytes(), &header));
        assert!(verify(&new, &id, now, body.as_bytes(), &header));

        let line = |secret: &str, id: &str, body: &str, ok: bool| {
            json!({ "secret": secret, "id": id, "timestamp": now, "body": body,
                    "signature": header, "valid": ok })
            .to_string()
        };
        // Both rotated secrets verify the two-signature header, with and without the prefix.
        lines.push(line(&text_form(&old_text, i % 2 == 0), &id, &body, true));
        lines.push(line(&text_form(&new_text, i % 3 != 0), &id, &body, true));
        valid += 2;
        // Tampered copies must be refused by the reference verifier too.
        let tampered_body = format!("{body} ");
        assert!(!verify(&old, &id, now, tampered_body.as_bytes(), &header));
        lines.push(line(&old_text, &id, &tampered_body, false));
        let tampered_id = format!("{id}x");
        lines.push(line(&new_text, &tampered_id, &body, false));
        lines.push(line(&stranger_text, &id, &body, false));
        invalid += 3;
    }
    // One message signed by a single secret, to check the unrotated form as well.
    let id = new_message_id();
    let header = sign(std::slice::from_ref(&new), &id, now, b"{}");
    lines.push(
        json!({ "secret": new_text, "id": id, "timestamp": now, "body": "{}",
                "signature": header })
        .to_string(),
    );
    valid += 1;

    let Some(python) = python() else {
        println!(
            "note: WEBHOOK_VERIFY_PYTHON is not set; skipped verification of {} lines with the \
             reference `standardwebhooks` package (Rust-side checks ran)",
            lines.len()
        );
        return;
    };
    let mut child = Command::new(&python)
        .arg(SCRIPT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run WEBHOOK_VERIFY_PYTHON={python}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(lines.join("\n").as_bytes()).unwrap();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "reference verifier failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains(&format!("{} passed, 0 failed", valid + invalid)),
        "{stdout}"
    );
    println!("{}", stdout.trim());
}
