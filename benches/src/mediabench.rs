//! `loadgen media`: upload and download MiB/s of one large file through
//! pypes' gRPC `MediaService` on loopback, against a plain file copy of the
//! same bytes in the same run (read, write, fdatasync: the same work minus
//! gRPC, AES-GCM and SHA-256). Each is file to file and durable at the end:
//! the upload reads the source and the server fsyncs the blob; the download
//! writes what it receives to a file and fdatasyncs it. Rounds alternate
//! copy, upload, download; the median of each is compared. Then the
//! latency of small (64 KiB) uploads, one at a time.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use proto::api as pb;

use crate::apibench::{authed, start_pypes, world};

const PIECE: usize = 1 << 20;

fn source(path: &Path, bytes: u64) -> Result<()> {
    let mut f = std::fs::File::create(path)?;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut buf = vec![0u8; PIECE];
    let mut left = bytes;
    while left > 0 {
        for b in buf.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let n = left.min(PIECE as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    Ok(())
}

fn copy(from: &Path, to: &Path) -> Result<f64> {
    let t0 = Instant::now();
    let mut input = std::fs::File::open(from)?;
    let mut out = std::fs::File::create(to)?;
    let mut buf = vec![0u8; PIECE];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
    }
    out.sync_data()?;
    Ok(t0.elapsed().as_secs_f64())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The upload messages of the file at `path`, read 1 MiB at a time as the
/// stream is polled.
fn upload_stream(
    path: &Path,
    session: &str,
    user: &str,
    size: u64,
) -> Result<impl tokio_stream::Stream<Item = pb::UploadMediaRequest> + use<>> {
    use pb::upload_media_request::Part;
    let mut file = std::fs::File::open(path)?;
    let start = pb::UploadMediaRequest {
        part: Some(Part::Start(pb::UploadStart {
            session_id: session.into(),
            uploader_id: user.into(),
            content_type: "video/mp4".into(),
            size,
            ..Default::default()
        })),
    };
    let mut offset = 0u64;
    let chunks = std::iter::from_fn(move || {
        let mut buf = vec![0u8; PIECE];
        let n = file.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        buf.truncate(n);
        let chunk = pb::UploadChunk { offset, data: buf.into() };
        offset += n as u64;
        Some(pb::UploadMediaRequest { part: Some(Part::Chunk(chunk)) })
    });
    Ok(tokio_stream::iter(std::iter::once(start).chain(chunks)))
}

pub async fn run(dir: &Path, mib: u64, rounds: usize, small: usize) -> Result<()> {
    let size = mib << 20;
    let src = dir.join("source.bin");
    source(&src, size)?;
    let pypes = start_pypes(&dir.join("data"), 1000)?;
    pypes.ready().await?;
    let channel = tonic::transport::Channel::from_shared(pypes.addr.clone())?.connect().await?;
    let w = world(channel.clone(), 1, 1).await?;
    let session = w.sessions.first().context("no session")?.clone();
    let mut media = pb::media_service_client::MediaServiceClient::new(channel.clone());
    println!("# {mib} MiB file, {rounds} rounds (copy, upload, download alternating); 1 MiB messages");
    let (mut copies, mut ups, mut downs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let dest = dir.join("copy.bin");
        let c = copy(&src, &dest)?;
        std::fs::remove_file(&dest)?;
        let t0 = Instant::now();
        let m = media
            .upload_media(authed(&w.key, upload_stream(&src, &session, &w.user, size)?))
            .await
            .context("upload")?
            .into_inner();
        let u = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        let request =
            pb::DownloadMediaRequest { session_id: session.clone(), media_id: m.media_id, ..Default::default() };
        let mut stream = media.download_media(authed(&w.key, request)).await.context("download")?.into_inner();
        let mut out = std::fs::File::create(&dest)?;
        let mut got = 0u64;
        while let Some(chunk) = stream.message().await? {
            out.write_all(&chunk.data)?;
            got += chunk.data.len() as u64;
        }
        out.sync_data()?;
        let d = t0.elapsed().as_secs_f64();
        anyhow::ensure!(got == size, "downloaded {got} of {size} bytes");
        drop(out);
        std::fs::remove_file(&dest)?;
        let rate = |secs: f64| mib as f64 / secs;
        println!(
            "round {}: copy {:.0} MiB/s, upload {:.0} MiB/s, download {:.0} MiB/s",
            round + 1,
            rate(c),
            rate(u),
            rate(d)
        );
        copies.push(rate(c));
        ups.push(rate(u));
        downs.push(rate(d));
    }
    let (c, u, d) = (median(&mut copies), median(&mut ups), median(&mut downs));
    println!("BENCH media_copy mib={mib} mib_per_s={c:.0}");
    println!("BENCH media_upload mib={mib} mib_per_s={u:.0} ratio_to_copy={:.2}", u / c);
    println!("BENCH media_download mib={mib} mib_per_s={d:.0} ratio_to_copy={:.2}", d / c);

    // Small uploads: the latency a chat picture sees (one at a time).
    let picture = vec![7u8; 64 << 10];
    let mut lat = Vec::with_capacity(small);
    for _ in 0..small {
        let messages = vec![
            pb::UploadMediaRequest {
                part: Some(pb::upload_media_request::Part::Start(pb::UploadStart {
                    session_id: session.clone(),
                    uploader_id: w.user.clone(),
                    content_type: "image/jpeg".into(),
                    size: picture.len() as u64,
                    ..Default::default()
                })),
            },
            pb::UploadMediaRequest {
                part: Some(pb::upload_media_request::Part::Chunk(pb::UploadChunk {
                    offset: 0,
                    data: picture.clone().into(),
                })),
            },
        ];
        let t0 = Instant::now();
        media.upload_media(authed(&w.key, tokio_stream::iter(messages))).await?;
        lat.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    if !lat.is_empty() {
        lat.sort_by(f64::total_cmp);
        let p = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
        println!(
            "BENCH media_small_upload kib=64 n={} p50_ms={:.2} p99_ms={:.2} per_s={:.0}",
            lat.len(),
            p(0.5),
            p(0.99),
            lat.len() as f64 / (lat.iter().sum::<f64>() / 1000.0)
        );
    }
    Ok(())
}
