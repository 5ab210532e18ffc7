//! `rampart-erp`: serves the reference ERP on `--bind` / `RAMPART_BIND` (default
//! `127.0.0.1:8080`) and shuts down gracefully on SIGTERM or Ctrl-C.

use std::net::SocketAddr;

use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let bind = bind_address(std::env::args().skip(1), std::env::var("RAMPART_BIND").ok())?;
    let listener = tokio::net::TcpListener::bind(bind).await?;
    tracing::info!(addr = %listener.local_addr()?, "rampart-erp listening");
    axum::serve(
        listener,
        rampart_erp::app().into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown())
    .await?;
    Ok(())
}

fn bind_address(
    mut args: impl Iterator<Item = String>,
    env: Option<String>,
) -> Result<SocketAddr, Box<dyn std::error::Error>> {
    let mut bind = env;
    while let Some(arg) = args.next() {
        if let Some(v) = arg.strip_prefix("--bind=") {
            bind = Some(v.to_owned());
        } else if arg == "--bind" {
            bind = Some(
                args.next()
                    .ok_or("--bind needs an address, e.g. --bind 127.0.0.1:8080")?,
            );
        } else {
            return Err(
                format!("unknown argument `{arg}`; usage: rampart-erp [--bind ADDR]").into(),
            );
        }
    }
    let bind = bind.unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    bind.parse().map_err(|e| {
        format!("invalid bind address `{bind}`: {e} (expected e.g. 127.0.0.1:8080)").into()
    })
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::bind_address;

    #[test]
    fn bind_flag_beats_env_and_default() {
        let args = |v: &[&str]| {
            v.iter()
                .map(|s| (*s).to_owned())
                .collect::<Vec<_>>()
                .into_iter()
        };
        assert_eq!(
            bind_address(args(&[]), None).unwrap().to_string(),
            "127.0.0.1:8080"
        );
        assert_eq!(
            bind_address(args(&[]), Some("0.0.0.0:1".into()))
                .unwrap()
                .port(),
            1
        );
        assert_eq!(
            bind_address(args(&["--bind", "127.0.0.1:9"]), Some("0.0.0.0:1".into()))
                .unwrap()
                .port(),
            9
        );
        assert_eq!(
            bind_address(args(&["--bind=127.0.0.1:7"]), None)
                .unwrap()
                .port(),
            7
        );
        assert!(bind_address(args(&["--bind"]), None).is_err());
        assert!(bind_address(args(&["--nope"]), None).is_err());
        assert!(
            bind_address(args(&[]), Some("nonsense".into()))
                .unwrap_err()
                .to_string()
                .contains("nonsense")
        );
    }
}
