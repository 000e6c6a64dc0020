//! The resolver against a real DNS server on loopback.

mod common;

use common::*;
use drawbridge::config::DnsSettings;
use drawbridge::domain::Domain;
use drawbridge::net::resolve::{ResolveError, Resolver, TargetSource};

fn resolver(dns: &Dns) -> Resolver {
    Resolver::new(&DnsSettings { nameservers: vec![dns.addr], timeout: std::time::Duration::from_secs(2), overrides: vec![] }).unwrap()
}

#[tokio::test]
async fn srv_records_in_priority_order() {
    let dns = Dns::start().await;
    dns.add_srv("s.test", 20, 0, "c.s.test", 5271).await;
    dns.add_srv("s.test", 10, 10, "a.s.test", 5269).await;
    dns.add_srv("s.test", 10, 0, "b.s.test", 5270).await;
    let t = resolver(&dns).targets(&Domain::parse("s.test").unwrap()).await.unwrap();
    assert_eq!(t.len(), 3);
    assert!(t.iter().all(|t| t.source == TargetSource::Srv));
    assert_eq!(t[2].host, "c.s.test");
    assert_eq!(t[2].port, 5271);
    let mut first_two: Vec<_> = t[..2].iter().map(|t| t.host.as_str()).collect();
    first_two.sort();
    assert_eq!(first_two, vec!["a.s.test", "b.s.test"]);
}

#[tokio::test]
async fn no_srv_falls_back_to_the_domain_on_5269() {
    let dns = Dns::start().await;
    dns.add_a("plain.test", std::net::Ipv4Addr::LOCALHOST).await;
    let r = resolver(&dns);
    let t = r.targets(&Domain::parse("plain.test").unwrap()).await.unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!((t[0].host.as_str(), t[0].port, t[0].source), ("plain.test", 5269, TargetSource::Fallback));
    let addrs = r.addresses(&t[0]).await.unwrap();
    assert_eq!(addrs, vec!["127.0.0.1:5269".parse().unwrap()]);
}

#[tokio::test]
async fn dot_target_means_no_service() {
    let dns = Dns::start().await;
    dns.add_srv_root("none.test").await;
    let e = resolver(&dns).targets(&Domain::parse("none.test").unwrap()).await.unwrap_err();
    assert!(matches!(e, ResolveError::NoService(_)), "{e}");
}
