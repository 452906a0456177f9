//! `nix log --store URL OUTPUT` against a Larder cache shows the log
//! `nix store copy-log` uploaded for the output's deriver (docs/protocol.md "Build logs and realisations"), for every
//! client under test; a stranger sees nothing.

use larder_e2e::tree::random_seed;
use larder_e2e::{Nix, NixClient, Server, ServerOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nix_log_shows_an_uploaded_build_log() -> anyhow::Result<()> {
    let clients = NixClient::under_test("nix_log_shows_an_uploaded_build_log");
    if clients.is_empty() {
        return Ok(());
    }
    let server = Server::start_embedded(ServerOptions::without_workers()).await?;
    let root = server.client();
    let cache = "e2e-logs";
    root.create_cache(cache).await?;
    let cache_url = format!("{}/{cache}", server.url());
    for client in &clients {
        let line = format!("larder e2e build log {:016x}", random_seed());
        let builder = Nix::with_client(client)?;
        let (out, drv) = builder.build_printing("larder-e2e-log", &line).await?;
        let netrc = builder.write_netrc("127.0.0.1", server.token())?;
        builder
            .copy_to(&cache_url, &netrc, std::slice::from_ref(&out))
            .await
            .map_err(|e| e.context(format!("{client}")).context(server.log()))?;
        builder
            .copy_log_to(&cache_url, &netrc, &drv)
            .await
            .map_err(|e| e.context(format!("{client}")).context(server.log()))?;

        let reader = Nix::with_client(client)?;
        let netrc = reader.write_netrc("127.0.0.1", server.token())?;
        let log = reader
            .log_from(&cache_url, &netrc, &out)
            .await
            .map_err(|e| e.context(format!("{client}")).context(server.log()))?;
        anyhow::ensure!(log.contains(&line), "{client}: nix log printed {log:?}");

        let stranger = Nix::with_client(client)?;
        let netrc = stranger.write_netrc("127.0.0.1", "not-a-token")?;
        let refused = stranger.log_from(&cache_url, &netrc, &out).await;
        anyhow::ensure!(
            refused.as_ref().map_or(true, |log| !log.contains(&line)),
            "{client}: a stranger read the log: {refused:?}"
        );
    }
    Ok(())
}
