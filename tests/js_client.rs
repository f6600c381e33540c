//! The TypeScript client (clients/js): its type check, its vitest unit
//! tests, and its end-to-end tests against this build's `herald` binary.

use std::path::Path;
use std::process::Command;

mod common;

#[test]
fn the_typescript_client_builds_and_passes_its_tests_against_a_real_hub() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js");
    if !dir.join("node_modules/vitest").exists() {
        // .ci/run installs it; a developer machine may not have it.
        common::skip("needs `npm ci --prefix clients/js`");
        return;
    }
    for args in [&["run", "build"][..], &["test"][..]] {
        let out = Command::new("npm")
            .args(args)
            .current_dir(&dir)
            .env("E2E_HERALD_BIN", env!("CARGO_BIN_EXE_herald"))
            .env("NO_COLOR", "1")
            .output()
            .expect("run npm");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "npm {args:?} failed:\n{stdout}\n{stderr}"
        );
        if args == ["test"] {
            assert!(
                stdout.contains("e2e.test.ts") && !stdout.contains("skipped"),
                "the end-to-end tests must run:\n{stdout}"
            );
        }
    }
}
