//! `larder use`: the nix.conf and netrc it writes make stock Nix 2.8
//! substitute from a private cache, and a second run changes nothing. The
//! host's Nix only: the files name host paths, which the newer Nix in its
//! chroot cannot see.
//!
//! Nix reads `$NIX_CONF_DIR/nix.conf` (instead of `/etc/nix/nix.conf`), then
//! `$XDG_CONFIG_DIRS/nix/nix.conf` and `$XDG_CONFIG_HOME/nix/nix.conf`; as
//! root without a daemon every setting of the user's file applies. Nix's
//! built-in default substituter is cache.nixos.org, which a loopback-only
//! test must not contact, so the stand-in system nix.conf says only
//! `substituters =`; everything else comes from `larder use`.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use larder_e2e::cli::{self, make_token};
use larder_e2e::nix::run;
use larder_e2e::tree::random_seed;
use larder_e2e::{LarderCli, Nix, Server, ServerOptions, StoreTree, TempStore, nix_available};

/// Content and modification time, to tell whether a file was rewritten.
fn snapshot(path: &Path) -> anyhow::Result<(Vec<u8>, SystemTime)> {
    Ok((std::fs::read(path)?, std::fs::metadata(path)?.modified()?))
}

/// The `name = value` settings of a nix.conf, in order.
fn settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let l = l.split('#').next()?.trim();
            let (name, value) = l.split_once('=')?;
            Some((name.trim().to_owned(), value.trim().to_owned()))
        })
        .collect()
}

/// Nix's configuration files for one run: the stand-in system nix.conf and
/// the user's config home (`None`: an empty one).
struct NixConfig<'a> {
    system_dir: &'a Path,
    user_config_home: &'a Path,
    no_dirs: &'a Path,
}

impl NixConfig<'_> {
    /// `nix-store --store <fresh> --realise PATH… [--option NAME VALUE]…`
    /// with only these configuration files.
    async fn realise(
        &self,
        nix: &Nix,
        options: &[(String, String)],
        paths: &[String],
    ) -> anyhow::Result<TempStore> {
        let store = TempStore::new()?;
        let mut cmd = nix.command("nix-store");
        cmd.env("NIX_CONF_DIR", self.system_dir)
            .env("XDG_CONFIG_HOME", self.user_config_home)
            .env("XDG_CONFIG_DIRS", self.no_dirs)
            .env_remove("NIX_USER_CONF_FILES")
            .arg("--store")
            .arg(store.root())
            .arg("--realise")
            .args(paths);
        for (name, value) in options {
            cmd.args(["--option", name, value]);
        }
        run(cmd).await?;
        Ok(store)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn larder_use_configures_nix() -> anyhow::Result<()> {
    if !nix_available("larder_use_configures_nix") {
        return Ok(());
    }
    let server = Server::start_embedded(ServerOptions::default()).await?;
    let root = server.client();
    let cache = "e2e-use";
    root.create_cache(cache).await?;
    let public_key = root.public_key(cache).await?;
    let nix = Nix::new()?;
    let tops = StoreTree::pairs(random_seed(), "larder-e2e-use", 1)
        .build(&nix)
        .await?;
    let infos = root.upload_closure(&nix, cache, &tops).await?;
    let closure: Vec<String> = infos.iter().map(|i| i.path.clone()).collect();

    // A user with a pull-only token runs `larder use`, writing temp files.
    let pull_token = make_token(&server.config_path(), "reader", &["--pull", cache]).await?;
    let user = LarderCli::new()?;
    user.login("e2e", &server.url(), &pull_token).await?;
    let nix_config_home = user.dir().join("nix-config");
    let nix_conf = nix_config_home.join("nix").join("nix.conf");
    let netrc = user.dir().join("netrc");
    let larder_use = || -> anyhow::Result<tokio::process::Command> {
        let mut cmd = user.command(&["use", &format!("e2e:{cache}")])?;
        cmd.env("LARDER_NIX_CONF", &nix_conf)
            .env("LARDER_NETRC", &netrc);
        Ok(cmd)
    };
    let first = cli::output(larder_use()?).await?.success()?;
    first.ensure_plain()?;

    let conf_text = std::fs::read_to_string(&nix_conf)?;
    let conf = settings(&conf_text);
    let substituter = format!("{}/{cache}", server.url());
    let netrc_path = netrc.to_string_lossy().into_owned();
    let want = [
        ("extra-substituters", substituter.as_str()),
        ("extra-trusted-public-keys", public_key.as_str()),
        ("netrc-file", netrc_path.as_str()),
    ];
    for (name, value) in want {
        assert!(
            conf.iter().any(|(n, v)| n == name && v == value),
            "no `{name} = {value}` in the generated nix.conf:\n{conf_text}"
        );
    }
    let netrc_text = std::fs::read_to_string(&netrc)?;
    assert!(
        netrc_text.contains("machine 127.0.0.1") && netrc_text.contains(&pull_token),
        "netrc lacks the host or the token"
    );
    let mode = std::fs::metadata(&netrc)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "netrc mode {mode:o}");

    // Twice: nothing changes.
    let before = (snapshot(&nix_conf)?, snapshot(&netrc)?);
    let second = cli::output(larder_use()?).await?.success()?;
    assert!(
        second.stdout.contains("already up to date"),
        "second run:\n{second}"
    );
    assert!(
        before == (snapshot(&nix_conf)?, snapshot(&netrc)?),
        "a second `larder use` rewrote nix.conf or netrc:\n{}",
        std::fs::read_to_string(&nix_conf)?
    );

    let system_dir = user.dir().join("etc-nix");
    std::fs::create_dir(&system_dir)?;
    std::fs::write(system_dir.join("nix.conf"), "substituters =\n")?;
    let empty_home: PathBuf = user.dir().join("empty-config");
    std::fs::create_dir(&empty_home)?;
    let no_dirs = user.dir().join("no-xdg-config-dirs");

    // Without the generated configuration there is nothing to substitute
    // from: the realisation fails.
    let bare = NixConfig {
        system_dir: &system_dir,
        user_config_home: &empty_home,
        no_dirs: &no_dirs,
    };
    let attempt = bare.realise(&Nix::new()?, &[], &tops).await;
    assert!(
        attempt.is_err(),
        "realised {tops:?} without any substituter configured"
    );

    // 1. The generated nix.conf as the user's nix.conf.
    let with_file = NixConfig {
        system_dir: &system_dir,
        user_config_home: &nix_config_home,
        no_dirs: &no_dirs,
    };
    let by_file = Nix::new()?;
    let store = with_file.realise(&by_file, &[], &tops).await?;
    by_file.verify(&store, &public_key, &closure).await?;

    // 2. Its settings as `--option NAME VALUE`, nothing else.
    let by_option = Nix::new()?;
    let store = bare.realise(&by_option, &conf, &tops).await?;
    by_option.verify(&store, &public_key, &closure).await?;

    nix.delete(&closure).await?;
    Ok(())
}
