//! Build logs with the real Nix CLI (docs/protocol.md "Build logs and
//! realisations"): a derivation that prints a known line, its log uploaded
//! with `nix store copy-log --to URL DRV` and read back with `nix log
//! --store URL OUTPUT`, both with the token from a netrc and no other
//! substituter.

use std::path::Path;

use anyhow::Context;

use crate::nix::{Nix, run};

impl Nix {
    /// Builds a derivation whose build prints `line`; returns its output
    /// and its `.drv`.
    pub async fn build_printing(&self, name: &str, line: &str) -> anyhow::Result<(String, String)> {
        let file = self.dir().join(format!("{name}.nix"));
        let expr = format!(
            "derivation {{ name = \"{name}\"; system = builtins.currentSystem; \
             builder = \"/bin/sh\"; args = [ \"-c\" \"echo '{line}'; echo done > $out\" ]; }}\n"
        );
        std::fs::write(&file, expr)?;
        let out = self.build(&file).await?;
        let out = out.first().context("nix-build printed no path")?;
        let mut cmd = self.command("nix-store");
        cmd.args(["-q", "--deriver", out]);
        Ok((out.clone(), run(cmd).await?.trim().to_owned()))
    }

    /// `nix store copy-log --to URL DRV`: uploads the local build log.
    pub async fn copy_log_to(&self, url: &str, netrc: &Path, drv: &str) -> anyhow::Result<()> {
        let mut cmd = self.nix();
        cmd.args(["store", "copy-log", "--to", url, drv])
            .arg("--option")
            .arg("netrc-file")
            .arg(netrc);
        run(cmd).await.context("nix store copy-log").map(drop)
    }

    /// `nix log --store URL PATH`, with no other substituter: the log of
    /// the derivation the cache's narinfo of `path` names as its deriver
    /// (Nix requires the installable to be valid in that store, and
    /// `nix copy` uploads outputs, not `.drv` files).
    pub async fn log_from(&self, url: &str, netrc: &Path, path: &str) -> anyhow::Result<String> {
        let mut cmd = self.nix();
        cmd.args(["log", "--store", url, path])
            .args(["--option", "substituters", ""])
            .arg("--option")
            .arg("netrc-file")
            .arg(netrc);
        run(cmd).await.context("nix log --store")
    }
}
