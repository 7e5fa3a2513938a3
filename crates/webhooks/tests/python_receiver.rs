//! The Python receiver sample in docs/integrations.md verifies what the
//! Rust signer makes, and refuses a changed body, a wrong secret and a
//! stale timestamp: the block is taken from the document and run.

use std::process::Command;

use webhooks::sign;

fn sample() -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/integrations.md")).unwrap();
    let after = doc.split("### Verifying a signature (Python)").nth(1).expect("the section");
    let block = after.split("```python\n").nth(1).expect("a python block");
    block.split("\n```").next().unwrap().to_string()
}

#[test]
fn the_documented_python_receiver_verifies_the_rust_signature() {
    let Ok(python) = which_python() else {
        // Python 3 is on every machine this runs on; say so if it is not.
        panic!("python3 not found: the documented receiver cannot be checked");
    };
    let body = br#"{"schema_version":1,"type":"message.posted","event_id":"0192"}"#;
    let now = 1_800_000_000i64;
    let header = sign::header(&[b"whsec_new", b"whsec_old"], now, body);
    let dir = tempfile_dir();
    let script = dir.join("receiver.py");
    let body_file = dir.join("body");
    std::fs::write(&body_file, body).unwrap();
    std::fs::write(
        &script,
        format!(
            "{}\n\nimport sys\nbody = open(sys.argv[3], 'rb').read()\nok = verify(sys.argv[1], sys.argv[2].encode(), body, now=float(sys.argv[4]))\nsys.exit(0 if ok else 3)\n",
            sample()
        ),
    )
    .unwrap();
    let run = |header: &str, secret: &str, body: &[u8], now: i64| {
        std::fs::write(&body_file, body).unwrap();
        let out = Command::new(&python)
            .arg(&script)
            .args([header, secret, body_file.to_str().unwrap(), &now.to_string()])
            .output()
            .unwrap();
        assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
        out.status.code()
    };
    assert_eq!(run(&header, "whsec_new", body, now), Some(0));
    assert_eq!(run(&header, "whsec_old", body, now + 60), Some(0), "the rotated-out secret during rotation");
    assert_eq!(run(&header, "whsec_other", body, now), Some(3));
    assert_eq!(run(&header, "whsec_new", b"{\"type\":\"other\"}", now), Some(3));
    assert_eq!(run(&header, "whsec_new", body, now + 3600), Some(3), "a replay an hour later");
    assert_eq!(run("t=oops", "whsec_new", body, now), Some(3));
    let _ = std::fs::remove_dir_all(dir);
}

fn which_python() -> Result<String, ()> {
    for p in ["python3", "/usr/bin/python3"] {
        if Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return Ok(p.to_string());
        }
    }
    Err(())
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pypes-webhook-sample-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
