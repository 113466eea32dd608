//! A lean HTTP/1.1 client for the load: one kept-alive connection, requests written as prepared
//! bytes, answers read with `httparse`. Like `wrk`, it spends next to nothing per request, so the
//! machine's cores go to the service under test rather than to the load generator.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A `POST /metrics` as bytes on the wire.
pub fn post_metrics(host: &str, key: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST /metrics HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// One connection to `address` (`host:port`), opened again when the server closes it.
pub struct Connection {
    address: String,
    stream: Option<TcpStream>,
    buffer: Vec<u8>,
}

impl Connection {
    pub fn new(address: &str) -> Connection {
        Connection {
            address: address.to_owned(),
            stream: None,
            buffer: Vec::with_capacity(16 * 1024),
        }
    }

    /// Sends `request` and returns the answer's status and body, within `timeout`.
    pub async fn send(
        &mut self,
        request: &[u8],
        timeout: Duration,
    ) -> std::io::Result<(u16, Vec<u8>)> {
        match tokio::time::timeout(timeout, self.exchange(request)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => {
                self.stream = None;
                Err(error)
            }
            Err(_) => {
                self.stream = None;
                Err(std::io::ErrorKind::TimedOut.into())
            }
        }
    }

    async fn exchange(&mut self, request: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(&self.address).await?;
            stream.set_nodelay(true)?;
            self.stream = Some(stream);
            self.buffer.clear();
        }
        let stream = self.stream.as_mut().expect("connected");
        stream.write_all(request).await?;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 24];
            let mut response = httparse::Response::new(&mut headers);
            let parsed = response
                .parse(&self.buffer)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            if let httparse::Status::Complete(head) = parsed {
                let status = response.code.unwrap_or(0);
                let length = header(response.headers, "content-length")
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                let closes = header(response.headers, "connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                while self.buffer.len() < head + length {
                    self.read_more().await?;
                }
                let body = self.buffer[head..head + length].to_vec();
                self.buffer.drain(..head + length);
                if closes {
                    self.stream = None;
                }
                return Ok((status, body));
            }
            self.read_more().await?;
        }
    }

    async fn read_more(&mut self) -> std::io::Result<()> {
        let stream = self.stream.as_mut().expect("connected");
        let mut chunk = [0u8; 8192];
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buffer.extend_from_slice(&chunk[..read]);
        Ok(())
    }
}

fn header<'a>(headers: &'a [httparse::Header<'a>], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
}
