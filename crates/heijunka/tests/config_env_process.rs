//! `Config::from_file_with_env` reads the real process environment. Its own test
//! binary with one test: setting variables is then free of races with other
//! threads reading the environment.
#![cfg(all(feature = "config", unix))]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use heijunka::config::Config;

#[test]
fn the_process_environment_is_read_and_a_stray_non_utf8_variable_is_ignored() {
    let dir = std::env::temp_dir().join(format!("heijunka-env-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.toml");
    std::fs::write(&path, "[concurrency.rate_limit]\nper_second = 10.0\n").unwrap();

    // SAFETY: this test binary runs this one test on one thread, and nothing else
    // in it reads or writes the environment concurrently.
    unsafe {
        // Someone else's variable that is not UTF-8: `std::env::vars()` panics
        // on it; reading the config must not.
        std::env::set_var("UNRELATED_NOT_UTF8", OsStr::from_bytes(b"\xff\xfe"));
        std::env::set_var("HEIJUNKA__CONCURRENCY__RATE_LIMIT__PER_SECOND", "200");
    }
    let config = Config::from_file_with_env(&path).unwrap();
    assert_eq!(config.concurrency.rate_limit.unwrap().per_second, 200.0);

    // One of ours that is not UTF-8 is an error naming it.
    // SAFETY: as above.
    unsafe {
        std::env::set_var(
            "HEIJUNKA__CONCURRENCY__RATE_LIMIT__BURST",
            OsStr::from_bytes(b"\xff"),
        );
    }
    let err = Config::from_file_with_env(&path).unwrap_err();
    assert!(
        err.to_string()
            .contains("HEIJUNKA__CONCURRENCY__RATE_LIMIT__BURST"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
