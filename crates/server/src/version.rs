//! What this binary is: version, commit, build profile, features
//! (`pypes --version`, `/metrics`' `pypes_build_info`).

/// The package version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit built from ("unknown" outside a git checkout; local changes
/// on top of it are not marked).
pub const COMMIT: &str = env!("SERVER_BUILD_COMMIT");
/// "release" or "debug".
pub const PROFILE: &str = env!("SERVER_BUILD_PROFILE");

/// The optional build features and whether this binary has them.
pub const FEATURES: &[(&str, bool)] = &[
    ("s3", cfg!(feature = "s3")),
    ("kurrentdb", cfg!(feature = "kurrentdb")),
    ("test-hooks", cfg!(feature = "test-hooks")),
];

/// The features this binary was built with, comma-separated ("none").
pub fn features() -> String {
    let on: Vec<&str> = FEATURES.iter().filter(|(_, on)| *on).map(|(name, _)| *name).collect();
    if on.is_empty() { "none".into() } else { on.join(",") }
}

static LONG: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!("{VERSION}\ncommit:   {COMMIT}\nprofile:  {PROFILE}\nfeatures: {}", features())
});

/// `pypes --version`'s long form.
pub fn long() -> &'static str {
    LONG.as_str()
}
