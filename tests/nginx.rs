//! rota in front of a real nginx (the Debian package), serving keep-alive HTTP.

mod support;

use std::process::{Child, Command, Stdio};

use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// nginx started with its own config and prefix in a temp folder; stopped on drop.
struct Nginx {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Nginx {
    fn start() -> Nginx {
        let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("nginx is not installed: .ci/run installs it (apt-get install nginx-light)");
        let dir = TempDir::new("nginx");
        let port = free_port();
        let d = dir.0.display();
        let conf = dir.write(
            "nginx.conf",
            &format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
                 keepalive_requests 10000;\n\
                 server {{\n    listen 127.0.0.1:{port};\n    location / {{ default_type text/plain; return 200 \"nginx says hi\\n\"; }}\n  }}\n}}\n"
            ),
        );
        let child = Command::new(binary)
            .args(["-p", &d.to_string(), "-c", conf.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nginx");
        Nginx {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one keep-alive GET and reads the response by its Content-Length.
async fn get(conn: &mut BufReader<TcpStream>) -> (u16, String) {
    conn.get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: nginx\r\n\r\n")
        .await
        .unwrap();
    let mut status_line = String::new();
    conn.read_line(&mut status_line).await.unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        conn.read_line(&mut h).await.unwrap();
        if h == "\r\n" || h.is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body).await.unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn keep_alive_requests_through_rota_reach_a_real_nginx() {
    let nginx = Nginx::start();
    let upstream: std::net::SocketAddr = format!("127.0.0.1:{}", nginx.port).parse().unwrap();
    eventually("nginx to listen", || async {
        TcpStream::connect(upstream)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await;
    let rota = start_rota_over("", &[upstream]).await;
    let addr = rota.endpoint_addr("web").unwrap();
    for c in 0..4 {
        let mut conn = BufReader::new(TcpStream::connect(addr).await.unwrap());
        for r in 0..250 {
            let (status, body) = tokio::time::timeout(DEADLINE, get(&mut conn))
                .await
                .expect("response in time");
            assert_eq!(
                (status, body.as_str()),
                (200, "nginx says hi\n"),
                "connection {c}, request {r}"
            );
        }
    }
    let view = instance_json(rota.admin_addr(), "web", "web-0").await;
    assert_eq!(
        view["connections_total"], 4,
        "four keep-alive connections carried 1000 requests: {view}"
    );
}
