//! Proves the Redis harness: private server stop/restart, and a 3-master cluster.

use rampart_test_support::{RedisCluster, RedisServer};
use redis::AsyncCommands;

#[tokio::test]
async fn private_server_can_be_killed_and_restarted() {
    let mut server = RedisServer::start();
    assert!(server.is_running());
    let client = redis::Client::open(server.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = con.set("k", "v1").await.unwrap();
    let v: String = con.get("k").await.unwrap();
    assert_eq!(v, "v1");

    server.stop();
    assert!(!server.is_running());
    let err = con.get::<_, String>("k").await;
    assert!(err.is_err(), "a killed server must not answer: {err:?}");
    assert!(
        redis::Client::open(server.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .is_err()
    );

    server.restart();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let gone: Option<String> = con.get("k").await.unwrap();
    assert_eq!(gone, None, "no persistence: the restarted server is empty");
    let _: () = con.set("k", "v2").await.unwrap();
    let v: String = con.get("k").await.unwrap();
    assert_eq!(v, "v2");
}

#[tokio::test]
async fn cluster_spreads_keys_over_three_masters() {
    let cluster = RedisCluster::start();
    assert_eq!(cluster.urls().len(), 3);
    let client = redis::cluster::ClusterClient::new(cluster.urls()).unwrap();
    let mut con = client.get_async_connection().await.unwrap();
    let mut owners = std::collections::BTreeSet::new();
    for i in 0..30 {
        let key = format!("key-{i}");
        let _: () = con.set(&key, i).await.unwrap();
        let v: i32 = con.get(&key).await.unwrap();
        assert_eq!(v, i);
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&key)
            .query_async(&mut con)
            .await
            .unwrap();
        owners.insert(cluster.port_for_slot(slot).expect("slot owner"));
    }
    assert_eq!(owners.len(), 3, "keys landed on every master: {owners:?}");
}

#[test]
fn dropping_a_server_kills_its_process() {
    let server = RedisServer::start();
    let port = server.port();
    assert!(rampart_test_support::ping(port));
    drop(server);
    assert!(!rampart_test_support::ping(port));
}

#[test]
fn redis_url_prefers_env() {
    // Without REDIS_URL a private server is started; with it, the URL is used as is.
    if std::env::var("REDIS_URL").is_err() {
        let (server, url) = rampart_test_support::redis_url();
        assert_eq!(url, server.url());
        assert!(rampart_test_support::ping(server.port()));
    }
}
