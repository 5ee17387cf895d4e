//! The tarball route: the host streams a metadata and a rootfs tarball over vsock
//! (`[u64 LE metadata_len][metadata][u64 LE rootfs_len][rootfs]`), and tremplin streams them
//! on, as they come, into LXD's split image upload (POST /1.0/images, multipart/form-data with a
//! `metadata` and a `rootfs` part). Nothing is spooled in the guest: LXD writes the parts to
//! its own image store while hashing them. The stream's SHA-256 (metadata ‖ rootfs) is LXD's
//! fingerprint for the image, so an image LXD already has is found by it.

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, oneshot};

use super::lxd_client::{Body, BodyError};

pub const MAX_METADATA: u64 = 64 << 20;
pub const MAX_ROOTFS: u64 = 16 << 30;
const CHUNK: usize = 256 << 10;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UploadError {
    #[error("the image stream ended early: {what} needs {expected} bytes, got {got}")]
    Short {
        what: &'static str,
        expected: u64,
        got: u64,
    },
    #[error("the image stream announces a {what} of {len} bytes; at most {max} are accepted")]
    TooLarge {
        what: &'static str,
        len: u64,
        max: u64,
    },
    #[error("the image stream announces an empty {0}")]
    Empty(&'static str),
    #[error("reading the image stream: {0}")]
    Io(String),
}

/// A multipart boundary that does not occur in tarballs by chance (128 random bits).
pub fn boundary() -> String {
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("crosd-tremplin-{hex}")
}

fn part_head(boundary: &str, name: &str, first: bool) -> Bytes {
    let lead = if first { "" } else { "\r\n" };
    Bytes::from(format!(
        "{lead}--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    ))
}

fn closing(boundary: &str) -> Bytes {
    Bytes::from(format!("\r\n--{boundary}--\r\n"))
}

async fn read_len<R: AsyncRead + Unpin>(
    r: &mut R,
    what: &'static str,
    max: u64,
) -> Result<u64, UploadError> {
    let mut b = [0u8; 8];
    let mut got = 0;
    while got < 8 {
        match r.read(&mut b[got..]).await {
            Ok(0) => {
                return Err(UploadError::Short {
                    what,
                    expected: 8,
                    got: got as u64,
                });
            }
            Ok(n) => got += n,
            Err(e) => return Err(UploadError::Io(e.to_string())),
        }
    }
    let len = u64::from_le_bytes(b);
    if len == 0 {
        return Err(UploadError::Empty(what));
    }
    if len > max {
        return Err(UploadError::TooLarge { what, len, max });
    }
    Ok(len)
}

/// Sends exactly `len` bytes of `r` as body chunks, hashing them.
async fn pump<R: AsyncRead + Unpin>(
    r: &mut R,
    len: u64,
    what: &'static str,
    hash: &mut Sha256,
    tx: &mpsc::Sender<Result<Bytes, BodyError>>,
) -> Result<(), UploadError> {
    let mut left = len;
    while left > 0 {
        let want = left.min(CHUNK as u64) as usize;
        let mut buf = vec![0u8; want];
        let n = r
            .read(&mut buf)
            .await
            .map_err(|e| UploadError::Io(e.to_string()))?;
        if n == 0 {
            return Err(UploadError::Short {
                what,
                expected: len,
                got: len - left,
            });
        }
        buf.truncate(n);
        hash.update(&buf);
        left -= n as u64;
        if tx.send(Ok(Bytes::from(buf))).await.is_err() {
            // LXD stopped reading (it refused the upload); its answer says why.
            return Ok(());
        }
    }
    Ok(())
}

/// The upload in progress: the body for LXD, and the stream's result (the image fingerprint,
/// or why the stream was bad) once the body has been produced.
pub struct MultipartUpload {
    pub body: Body,
    pub content_type: String,
    pub done: oneshot::Receiver<Result<String, UploadError>>,
}

/// Starts reading the host's stream `r` into a multipart body.
pub fn multipart<R: AsyncRead + Unpin + Send + 'static>(mut r: R) -> MultipartUpload {
    let boundary = boundary();
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let (tx, rx) = mpsc::channel::<Result<Bytes, BodyError>>(4);
    let (done_tx, done) = oneshot::channel();
    tokio::spawn(async move {
        let mut hash = Sha256::new();
        let result = async {
            let meta_len = read_len(&mut r, "metadata tarball", MAX_METADATA).await?;
            let _ = tx.send(Ok(part_head(&boundary, "metadata", true))).await;
            pump(&mut r, meta_len, "metadata tarball", &mut hash, &tx).await?;
            let root_len = read_len(&mut r, "rootfs tarball", MAX_ROOTFS).await?;
            let _ = tx.send(Ok(part_head(&boundary, "rootfs", false))).await;
            pump(&mut r, root_len, "rootfs tarball", &mut hash, &tx).await?;
            let _ = tx.send(Ok(closing(&boundary))).await;
            Ok::<(), UploadError>(())
        }
        .await;
        let result = match result {
            Ok(()) => Ok(hash
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()),
            Err(e) => {
                // Abort the request body, so LXD does not take a truncated image.
                let _ = tx.send(Err(e.to_string().into())).await;
                Err(e)
            }
        };
        let _ = done_tx.send(result);
    });
    let body = http_body_util::StreamBody::new(ChannelStream { rx }).boxed();
    MultipartUpload {
        body,
        content_type,
        done,
    }
}

/// The receiving end of the body channel as a stream of frames.
struct ChannelStream {
    rx: mpsc::Receiver<Result<Bytes, BodyError>>,
}

impl futures_util::Stream for ChannelStream {
    type Item = Result<Frame<Bytes>, BodyError>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(parts: &[&[u8]]) -> std::io::Cursor<Vec<u8>> {
        std::io::Cursor::new(parts.concat())
    }

    async fn collect(
        up: MultipartUpload,
    ) -> (Result<Vec<u8>, String>, Result<String, UploadError>) {
        let body = up.body.collect().await.map(|c| c.to_bytes().to_vec());
        let done = up.done.await.unwrap();
        (body.map_err(|e| e.to_string()), done)
    }

    #[tokio::test]
    async fn a_whole_stream_becomes_two_parts_and_the_fingerprint() {
        let meta = b"META";
        let root = b"ROOTFS-BYTES";
        let s = stream(&[
            &(meta.len() as u64).to_le_bytes(),
            meta,
            &(root.len() as u64).to_le_bytes(),
            root,
        ]);
        let up = multipart(s);
        let boundary = up
            .content_type
            .split("boundary=")
            .nth(1)
            .unwrap()
            .to_string();
        let (body, done) = collect(up).await;
        let body = String::from_utf8(body.unwrap()).unwrap();
        assert!(body.starts_with(&format!("--{boundary}\r\n")));
        assert!(body.contains("name=\"metadata\""));
        assert!(body.contains("\r\n\r\nMETA\r\n--"));
        assert!(body.contains("name=\"rootfs\""));
        assert!(body.ends_with(&format!("ROOTFS-BYTES\r\n--{boundary}--\r\n")));
        let want: String = Sha256::digest(b"METAROOTFS-BYTES")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(done.unwrap(), want);
    }

    #[tokio::test]
    async fn short_and_oversized_streams_are_errors() {
        let (body, done) = collect(multipart(stream(&[&10u64.to_le_bytes(), b"abc"]))).await;
        assert!(body.is_err());
        assert_eq!(
            done,
            Err(UploadError::Short {
                what: "metadata tarball",
                expected: 10,
                got: 3
            })
        );
        let (_, done) = collect(multipart(stream(&[&(MAX_METADATA + 1).to_le_bytes()]))).await;
        assert!(matches!(done, Err(UploadError::TooLarge { .. })));
        let (_, done) = collect(multipart(stream(&[
            &1u64.to_le_bytes(),
            b"m",
            &(MAX_ROOTFS + 1).to_le_bytes(),
        ])))
        .await;
        assert!(matches!(
            done,
            Err(UploadError::TooLarge {
                what: "rootfs tarball",
                ..
            })
        ));
        let (_, done) = collect(multipart(stream(&[&[1, 2, 3]]))).await;
        assert!(matches!(done, Err(UploadError::Short { expected: 8, .. })));
    }
}
