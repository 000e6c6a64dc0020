//! `drawbridge demo`: the server on `drawbridge.demo` plus simulated remote servers on
//! loopback that really federate with it, each with a behaviour, and the dashboard on top.
//! Its set-up and traffic are operator requests through the engine's API, like anyone's.
//! Everything lives in a temporary directory removed on exit.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::domain::Domain;
use crate::engine::{Engine, EngineHandle, Request};
use crate::net::tls::TlsContext;
use crate::stream::Transport;
use crate::xml::{Frame, Framer};

pub const DEMO_DOMAIN: &str = "drawbridge.demo";

/// The simulated peers: (domain, what it does).
pub const PEERS: &[(&str, &str)] = &[
    ("friend.example", "steady two-way traffic (approved)"),
    ("newcomer.example", "waits for approval: press 2, select it, a"),
    ("friend.example (spoofed)", "a spoofer claiming friend.example with a made-up dialback key"),
    ("garbled.example", "sends malformed XML"),
    ("spam.example", "on the demo blacklist"),
    ("oldcert.example", "presents an expired certificate"),
];

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn settings(dir: &Path, domain: &str, port: u16, overrides: &[(&str, u16)], extra: &str) -> Result<Settings, String> {
    let mut text = format!(
        "[server]\ndomains = [\"{domain}\"]\nlisten = [\"127.0.0.1:{port}\"]\ndata_dir = \"{}\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\ntimeout = \"1s\"\n[timeouts]\nidle_outbound = \"20s\"\nprobe = \"10s\"\ndialback = \"10s\"\n[log]\nfile = \"{}\"\n{extra}\n",
        dir.join(domain).display(),
        dir.join(format!("{domain}.log")).display()
    );
    for (d, p) in overrides {
        text.push_str(&format!("[[dns.override]]\ndomain = \"{d}\"\nhost = \"127.0.0.1\"\nport = {p}\n"));
    }
    Settings::parse(&text, &dir.join(format!("{domain}.toml"))).map_err(|e| e.to_string())
}

/// An expired self-signed certificate for `domain`, written as PEM files; returns TOML.
fn expired_cert(dir: &Path, domain: &str) -> Result<String, String> {
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()]).map_err(|e| e.to_string())?;
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let (c, k) = (dir.join(format!("{domain}.crt")), dir.join(format!("{domain}.key")));
    std::fs::write(&c, cert.pem()).map_err(|e| e.to_string())?;
    std::fs::write(&k, key.serialize_pem()).map_err(|e| e.to_string())?;
    Ok(format!("[tls]\ncert = \"{}\"\nkey = \"{}\"\n", c.display(), k.display()))
}

pub struct Demo {
    pub main: Engine,
    peers: Vec<Engine>,
    stop: CancellationToken,
    dir: std::path::PathBuf,
}

impl Demo {
    pub async fn start() -> Result<Demo, String> {
        let dir = std::env::temp_dir().join(format!("drawbridge-demo-{}", crate::table::random_id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let names = ["friend.example", "newcomer.example", "spam.example", "oldcert.example"];
        let main_port = free_port().map_err(|e| e.to_string())?;
        let mut ports = Vec::new();
        for _ in names {
            ports.push(free_port().map_err(|e| e.to_string())?);
        }
        let overrides: Vec<(&str, u16)> = names.iter().copied().zip(ports.iter().copied()).collect();
        let main = Engine::start(settings(&dir, DEMO_DOMAIN, main_port, &overrides, "[policy]\napproval_wait = \"10m\"\n")?)
            .await
            .map_err(|e| e.to_string())?;
        let mut peers = Vec::new();
        for (name, port) in names.iter().zip(&ports) {
            let extra = if *name == "oldcert.example" { expired_cert(&dir, name)? } else { String::new() };
            peers.push(Engine::start(settings(&dir, name, *port, &[(DEMO_DOMAIN, main_port)], &extra)?).await.map_err(|e| e.to_string())?);
        }
        // The operator's set-up, as any operator makes it: through the engine's API.
        let setup = main.acting_as("demo setup");
        let mut requests = vec![Request::Mode { mode: "approval".into() }];
        for d in ["friend.example", "oldcert.example"] {
            requests.push(Request::Approve { domain: d.into(), reason: Some("demo partner".into()) });
        }
        requests.push(Request::BlacklistImport {
            text: "# demo blacklist\nspam.example # sends spam\n".into(),
            source: Some("demo-blacklist".into()),
            dry_run: false,
        });
        for r in requests {
            setup.execute(r).await.map_err(|e| e.to_string())?;
        }
        let stop = CancellationToken::new();
        let demo = Demo { main, peers, stop, dir };
        demo.behave(main_port);
        Ok(demo)
    }

    fn behave(&self, main_port: u16) {
        let main = self.main.handle();
        let by_name = |n: &str| self.peers.iter().find(|e| e.settings().domains[0].as_str() == n).map(|e| e.handle()).expect("peer");
        let (friend, newcomer, spam, oldcert) =
            (by_name("friend.example"), by_name("newcomer.example"), by_name("spam.example"), by_name("oldcert.example"));
        let every =
            |period: Duration, stop: CancellationToken, f: Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, ()> + Send + Sync>| {
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(period);
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tick.tick() => f().await,
                        }
                    }
                });
            };
        let probe = |from: EngineHandle, to: &'static str| -> Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, ()> + Send + Sync> {
            Arc::new(move || {
                let from = from.clone();
                Box::pin(async move {
                    let _ = from.execute(Request::Probe { domain: to.into(), from: None }).await;
                })
            })
        };
        every(Duration::from_secs(2), self.stop.clone(), probe(friend.clone(), DEMO_DOMAIN));
        every(Duration::from_secs(3), self.stop.clone(), probe(main.clone(), "friend.example"));
        every(Duration::from_secs(5), self.stop.clone(), probe(newcomer, DEMO_DOMAIN));
        every(Duration::from_secs(7), self.stop.clone(), probe(spam, DEMO_DOMAIN));
        every(Duration::from_secs(11), self.stop.clone(), probe(oldcert, DEMO_DOMAIN));
        every(
            Duration::from_secs(9),
            self.stop.clone(),
            Arc::new(move || {
                Box::pin(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(10), spoof(main_port)).await;
                })
            }),
        );
        every(
            Duration::from_secs(13),
            self.stop.clone(),
            Arc::new(move || {
                Box::pin(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(10), garble(main_port)).await;
                })
            }),
        );
    }

    pub async fn stop(self) {
        self.stop.cancel();
        for p in self.peers {
            p.shutdown().await;
        }
        self.main.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A raw peer: header, STARTTLS, dialback claiming friend.example with a made-up key, then a
/// stanza it has no right to send.
async fn spoof(port: u16) -> std::io::Result<()> {
    let claimed = "friend.example";
    let mut io = Transport::Plain(TcpStream::connect(("127.0.0.1", port)).await?);
    let mut framer = Framer::new(1 << 20, 32);
    let hdr = crate::proto::stream::header(Some(claimed), Some(DEMO_DOMAIN), None);
    io.write_all(hdr.as_bytes()).await?;
    until(&mut io, &mut framer, |f| matches!(f, Frame::Element(e) if e.name == "features")).await?;
    io.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>").await?;
    until(&mut io, &mut framer, |f| matches!(f, Frame::Element(e) if e.name == "proceed")).await?;
    let Transport::Plain(tcp) = io else { return Ok(()) };
    let ck = rcgen::generate_simple_self_signed(vec![claimed.to_owned()]).map_err(std::io::Error::other)?;
    let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).map_err(std::io::Error::other)?;
    let ctx = TlsContext::from_parts(vec![ck.cert.der().clone()], key, &[Domain::parse(claimed).expect("valid")])
        .map_err(std::io::Error::other)?;
    let config = ctx.client_config(&Domain::parse(claimed).expect("valid"));
    let tls = crate::net::tls_io::TlsIo::connect(
        tcp,
        config,
        rustls::pki_types::ServerName::try_from(DEMO_DOMAIN).map_err(std::io::Error::other)?,
    )
    .await?;
    let mut io = Transport::Tls(Box::new(tls));
    let mut framer = Framer::new(1 << 20, 32);
    io.write_all(hdr.as_bytes()).await?;
    until(&mut io, &mut framer, |f| matches!(f, Frame::Element(e) if e.name == "features")).await?;
    let mut out = String::new();
    crate::xml::writer::write_top(&mut out, &crate::proto::dialback::result_request(claimed, DEMO_DOMAIN, &"0badc0de".repeat(8)));
    io.write_all(out.as_bytes()).await?;
    until(&mut io, &mut framer, |f| matches!(f, Frame::Element(e) if e.name == "result")).await?;
    io.write_all(b"<message from='mallory@friend.example' to='alice@drawbridge.demo'><body>trust me</body></message>").await?;
    until(&mut io, &mut framer, |f| matches!(f, Frame::StreamClose)).await?;
    io.write_all(b"</stream:stream>").await
}

/// A peer that sends malformed XML.
async fn garble(port: u16) -> std::io::Result<()> {
    let mut io = TcpStream::connect(("127.0.0.1", port)).await?;
    io.write_all(crate::proto::stream::header(Some("garbled.example"), Some(DEMO_DOMAIN), None).as_bytes()).await?;
    io.write_all(b"<message><body>unclosed</message></stream:stream>").await?;
    let mut buf = vec![0u8; 4096];
    while io.read(&mut buf).await? > 0 {}
    Ok(())
}

async fn until(io: &mut Transport, framer: &mut Framer, want: impl Fn(&Frame) -> bool) -> std::io::Result<()> {
    loop {
        while let Some(f) = framer.next_frame().map_err(std::io::Error::other)? {
            if want(&f) {
                return Ok(());
            }
        }
        let mut buf = [0u8; 4096];
        let n = io.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        framer.feed(&buf[..n]);
    }
}
