//! Where images come from and how bad ones are refused: local files, archive members and URLs, each bad input
//! mapped to its reject code, and the inputs left untouched.
//!
//! Every fixture is generated into a temporary directory; the HTTP tests run a small HTTP/1.1 server on 127.0.0.1
//! inside the test process.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use image::{ImageFormat, RgbImage};
use sha2::{Digest, Sha256};
use umrank::media::fetch::FetchConfig;
use umrank::media::{ImageLoader, ImageRecord, ImageReject, LoadOptions, RejectCode};

mod http {
    //! A tiny HTTP/1.1 server whose behaviour is chosen by the request path, and which records how it was used:
    //! requests per path, the most connections it was serving at once, and how much of a long body it wrote.

    use std::collections::HashMap;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Condvar, Mutex};
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    /// Size of the endless bodies sent to test the byte cap: far more than the client's cap plus what socket
    /// buffers can absorb, so writing all of it means the client did not abort.
    pub const ENDLESS_BODY: usize = 64 * 1024 * 1024;
    /// How long `/slow` waits before answering.
    const STALL: Duration = Duration::from_millis(1500);
    /// How long a `/gated` request waits for the first wave to fill before giving up.
    const GATE_WAIT: Duration = Duration::from_secs(2);
    /// How long every `/gated` request is held once the first wave has filled.
    const HOLD: Duration = Duration::from_millis(150);

    #[derive(Default)]
    struct Counters {
        hits: HashMap<String, usize>,
        open: usize,
        max_open: usize,
        endless_written: usize,
    }

    #[derive(Default)]
    struct Shared {
        counters: Mutex<Counters>,
        changed: Condvar,
    }

    impl Shared {
        fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
            self.counters
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        }
    }

    pub struct Server {
        addr: SocketAddr,
        shared: Arc<Shared>,
        stop: Arc<AtomicBool>,
        acceptor: Option<JoinHandle<()>>,
    }

    impl Server {
        /// Serves `image` (the body of every successful answer) until dropped.
        pub fn start(image: Vec<u8>) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind test server");
            listener
                .set_nonblocking(true)
                .expect("nonblocking listener");
            let addr = listener.local_addr().expect("server address");
            let shared = Arc::new(Shared::default());
            let stop = Arc::new(AtomicBool::new(false));
            let image = Arc::new(image);
            let acceptor = {
                let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match listener.accept() {
                            Ok((stream, _)) => {
                                let (shared, image) = (Arc::clone(&shared), Arc::clone(&image));
                                std::thread::spawn(move || serve(stream, &shared, &image));
                            }
                            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                                std::thread::sleep(Duration::from_millis(2));
                            }
                            Err(_) => break,
                        }
                    }
                })
            };
            Server {
                addr,
                shared,
                stop,
                acceptor: Some(acceptor),
            }
        }

        pub fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }

        pub fn hits(&self, path: &str) -> usize {
            self.shared.lock().hits.get(path).copied().unwrap_or(0)
        }

        /// Waits (boundedly) until `path` has been requested `count` times, for requests the client gave up on
        /// before the server necessarily read them; returns the count seen.
        pub fn wait_for_hits(&self, path: &str, count: usize) -> usize {
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.hits(path) < count && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            self.hits(path)
        }

        pub fn max_open(&self) -> usize {
            self.shared.lock().max_open
        }

        pub fn endless_written(&self) -> usize {
            self.shared.lock().endless_written
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(acceptor) = self.acceptor.take() {
                let _ = acceptor.join();
            }
        }
    }

    /// Reads the request head and returns its path.
    fn read_path(stream: &mut TcpStream) -> Option<String> {
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
            let n = stream.read(&mut buf).ok()?;
            if n == 0 {
                return None;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&head).lines().next()?.to_string();
        line.split_whitespace().nth(1).map(str::to_string)
    }

    fn serve(mut stream: TcpStream, shared: &Shared, image: &[u8]) {
        let Some(path) = read_path(&mut stream) else {
            return;
        };
        // The connection counts as open from reading the request to just before answering: an interval that lies
        // inside the client's own request, so the maximum seen here can only exceed the client's cap if the
        // client really had more requests in flight.
        let hit = {
            let mut counters = shared.lock();
            let hits = counters.hits.entry(path.clone()).or_default();
            *hits += 1;
            let hit = *hits;
            counters.open += 1;
            counters.max_open = counters.max_open.max(counters.open);
            shared.changed.notify_all();
            hit
        };
        if let Some(cap) = gate_size(&path) {
            hold(shared, cap);
        }
        if path == "/slow" {
            std::thread::sleep(STALL);
        }
        {
            let mut counters = shared.lock();
            counters.open -= 1;
            shared.changed.notify_all();
        }
        let _ = respond(&mut stream, &path, hit, shared, image);
    }

    /// Holds a `/gated` request so that requests in flight together overlap here: first until `cap` have been
    /// open at once (so the test proves the client runs requests concurrently at all), then for HOLD more, long
    /// enough that a client sending more than `cap` at once would have them all open here together. A request
    /// beyond the cap releases everyone: the maximum has then been recorded and the test will fail.
    fn hold(shared: &Shared, cap: usize) {
        let arrived = Instant::now();
        let mut counters = shared.lock();
        loop {
            let held = arrived.elapsed();
            let wave_seen = counters.max_open >= cap;
            if counters.open > cap || held >= GATE_WAIT || (wave_seen && held >= HOLD) {
                return;
            }
            let wake = if wave_seen {
                HOLD - held
            } else {
                GATE_WAIT - held
            };
            counters = match shared.changed.wait_timeout(counters, wake) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// `/gated/CAP/NAME` is held by [`hold`] with that cap.
    fn gate_size(path: &str) -> Option<usize> {
        path.strip_prefix("/gated/")?
            .split('/')
            .next()?
            .parse()
            .ok()
    }

    fn respond(
        stream: &mut TcpStream,
        path: &str,
        hit: usize,
        shared: &Shared,
        image: &[u8],
    ) -> std::io::Result<()> {
        match path {
            "/flaky" if hit == 1 => status(stream, "500 Internal Server Error", ""),
            "/busy" if hit == 1 => status(stream, "429 Too Many Requests", "Retry-After: 0\r\n"),
            "/missing" => status(stream, "404 Not Found", ""),
            "/always-500" => status(stream, "503 Service Unavailable", ""),
            "/huge-declared" => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {ENDLESS_BODY}\r\nConnection: close\r\n\r\n"
                );
                stream.write_all(head.as_bytes())?;
                endless_body(stream, shared)
            }
            "/huge-streamed" => {
                stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n",
                )?;
                endless_body(stream, shared)
            }
            _ => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    image.len()
                );
                stream.write_all(head.as_bytes())?;
                stream.write_all(image)
            }
        }
    }

    fn status(stream: &mut TcpStream, status: &str, extra_headers: &str) -> std::io::Result<()> {
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Length: 0\r\n{extra_headers}Connection: close\r\n\r\n"
        );
        stream.write_all(response.as_bytes())
    }

    /// Writes up to ENDLESS_BODY bytes, counting what the socket accepted, until the client hangs up.
    fn endless_body(stream: &mut TcpStream, shared: &Shared) -> std::io::Result<()> {
        let chunk = vec![0x5Au8; 64 * 1024];
        let mut written = 0;
        while written < ENDLESS_BODY {
            stream.write_all(&chunk)?;
            written += chunk.len();
            shared.lock().endless_written = written;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Fixtures

fn encode(format: ImageFormat, width: u32, height: u32) -> Vec<u8> {
    let image = RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 7) as u8, (y * 5) as u8, ((x ^ y) * 3) as u8])
    });
    let mut out = Cursor::new(Vec::new());
    image
        .write_to(&mut out, format)
        .expect("encode fixture image");
    out.into_inner()
}

fn png(width: u32, height: u32) -> Vec<u8> {
    encode(ImageFormat::Png, width, height)
}

/// A PNG whose IHDR declares other dimensions than its pixel data, with a valid IHDR checksum so that only the
/// declared size is wrong.
fn png_declaring(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = png(64, 48);
    bytes[16..20].copy_from_slice(&width.to_be_bytes());
    bytes[20..24].copy_from_slice(&height.to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    bytes
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn write(root: &Path, relative: &str, bytes: &[u8]) -> PathBuf {
    let path = root.join(relative);
    fs::create_dir_all(path.parent().expect("fixture has a parent")).expect("create fixture dir");
    fs::write(&path, bytes).expect("write fixture");
    path
}

/// A temporary directory holding the dataset root `data/` and, beside it, files that are outside the root.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("data")).expect("create root");
        Workspace { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn outside(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

/// Options for tests: small, fast retries and timeouts that still leave room for a loaded machine.
fn options() -> LoadOptions {
    LoadOptions {
        threads: 2,
        fetch: FetchConfig {
            concurrency: 4,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            retries: 2,
            backoff_base: Duration::from_millis(1),
            backoff_max: Duration::from_millis(4),
            ..FetchConfig::default()
        },
        ..LoadOptions::default()
    }
}

fn load<S: AsRef<str> + Sync>(
    root: &Path,
    options: LoadOptions,
    references: &[S],
) -> Vec<Result<ImageRecord, ImageReject>> {
    let loader = ImageLoader::new(root, options).expect("loader");
    let results = loader.load(references);
    assert_eq!(results.len(), references.len(), "one result per reference");
    results
}

fn load_one(
    root: &Path,
    options: LoadOptions,
    reference: &str,
) -> Result<ImageRecord, ImageReject> {
    load(root, options, &[reference]).remove(0)
}

#[track_caller]
fn assert_rejected(result: &Result<ImageRecord, ImageReject>, code: RejectCode, reference: &str) {
    match result {
        Ok(record) => panic!(
            "{reference} loaded ({}x{}), expected reject {code}",
            record.width, record.height
        ),
        Err(reject) => {
            assert_eq!(
                reject.code, code,
                "{reference}: wrong code, detail: {}",
                reject.detail
            );
            assert!(
                reject.detail.starts_with(reference),
                "detail should name the reference {reference}: {}",
                reject.detail
            );
        }
    }
}

#[track_caller]
fn assert_loaded(
    result: &Result<ImageRecord, ImageReject>,
    bytes: &[u8],
    format: &str,
    size: (u32, u32),
) {
    match result {
        Ok(record) => {
            assert_eq!(record.image_id, sha256_hex(bytes));
            assert_eq!(&record.bytes[..], bytes, "bytes are the original encoding");
            assert_eq!(record.format, format);
            assert_eq!((record.width, record.height), size);
        }
        Err(reject) => panic!("expected an image, got {reject}"),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Local files

#[test]
fn every_supported_format_loads_and_is_refused_when_cut_short() {
    let ws = Workspace::new();
    let root = ws.root();
    let formats = [
        (ImageFormat::Png, "png"),
        (ImageFormat::Jpeg, "jpeg"),
        (ImageFormat::Gif, "gif"),
        (ImageFormat::WebP, "webp"),
        (ImageFormat::Bmp, "bmp"),
    ];
    let mut references = Vec::new();
    let mut expected = Vec::new();
    for (format, name) in formats {
        let bytes = encode(format, 64, 48);
        // Cutting only the last bytes is the hard case: a JPEG decoder fills in the missing rows without error.
        let cut = &bytes[..bytes.len() - 10];
        write(&root, &format!("whole.{name}"), &bytes);
        write(&root, &format!("cut.{name}"), cut);
        references.push(format!("whole.{name}"));
        references.push(format!("cut.{name}"));
        expected.push((bytes, name));
    }
    let results = load(&root, options(), &references);
    for (i, (bytes, name)) in expected.iter().enumerate() {
        assert_loaded(&results[2 * i], bytes, name, (64, 48));
        assert_rejected(
            &results[2 * i + 1],
            RejectCode::Truncated,
            &references[2 * i + 1],
        );
    }
}

/// Encodings the image crate cannot write but real data is full of, made by Pillow (tests/fixtures/media/).
const POPULAR_ENCODINGS: [(&str, &str, (u32, u32)); 4] = [
    ("progressive.jpg", "jpeg", (48, 32)),
    ("restart.jpg", "jpeg", (48, 32)),
    ("animated.gif", "gif", (24, 16)),
    ("lossy.webp", "webp", (40, 24)),
];

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/media")
        .join(name);
    fs::read(&path).unwrap_or_else(|err| panic!("read fixture {}: {err}", path.display()))
}

#[test]
fn popular_encodings_load_and_are_refused_when_cut_short() {
    let ws = Workspace::new();
    let root = ws.root();
    for (name, format, size) in POPULAR_ENCODINGS {
        let bytes = fixture(name);
        write(&root, name, &bytes);
        // For the GIF this cuts into the last frame, which decoding the first frame alone would not notice.
        let cut = format!("cut-{name}");
        write(&root, &cut, &bytes[..bytes.len() - 12]);
        let results = load(&root, options(), &[name, cut.as_str()]);
        assert_loaded(&results[0], &bytes, format, size);
        assert_rejected(&results[1], RejectCode::Truncated, &cut);
    }
}

#[test]
fn data_after_the_end_of_an_image_is_not_truncation() {
    let ws = Workspace::new();
    let root = ws.root();
    // Bytes that look like JPEG start-of-scan and end-of-image markers, as in the video a motion photo appends.
    let trailer: &[u8] = b"\xFF\xDA\x00\x08trailer\xFF\xD9 and more trailing data";
    let images = [
        (
            "baseline.jpg",
            encode(ImageFormat::Jpeg, 30, 20),
            "jpeg",
            (30, 20),
        ),
        (
            "progressive.jpg",
            fixture("progressive.jpg"),
            "jpeg",
            (48, 32),
        ),
        ("plain.png", png(30, 20), "png", (30, 20)),
        ("animated.gif", fixture("animated.gif"), "gif", (24, 16)),
    ];
    for (name, bytes, format, size) in images {
        let extended = [bytes.as_slice(), trailer].concat();
        write(&root, name, &extended);
        assert_loaded(&load_one(&root, options(), name), &extended, format, size);
    }
}

#[test]
fn bad_local_files_get_their_reject_codes() {
    let ws = Workspace::new();
    let root = ws.root();
    let good = png(64, 48);
    let mut corrupt = good.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle..middle + 16]
        .iter_mut()
        .for_each(|b| *b ^= 0xA5);
    let mut zero_width_gif = encode(ImageFormat::Gif, 64, 48);
    zero_width_gif[6..8].copy_from_slice(&0u16.to_le_bytes());

    write(&root, "good.png", &good);
    write(&root, "truncated.png", &good[..good.len() / 2]);
    write(&root, "corrupt.png", &corrupt);
    write(&root, "notes.png", b"these are notes, not pixels\n");
    write(&root, "empty.png", b"");
    write(&root, "scan.tif", b"II*\0\x08\0\0\0\0\0\0\0\0\0\0\0");
    write(&root, "photo.heic", b"\0\0\0\x18ftypheic\0\0\0\0mif1heic");
    write(&root, "zero.gif", &zero_width_gif);
    write(&root, "bomb.png", &png_declaring(100_000, 100_000));
    fs::create_dir_all(root.join("a/directory.png")).expect("dir");

    let cases = [
        ("good.png", None),
        ("missing.png", Some(RejectCode::Missing)),
        ("truncated.png", Some(RejectCode::Truncated)),
        ("corrupt.png", Some(RejectCode::Corrupt)),
        ("notes.png", Some(RejectCode::NotAnImage)),
        ("empty.png", Some(RejectCode::NotAnImage)),
        ("scan.tif", Some(RejectCode::UnsupportedFormat)),
        ("photo.heic", Some(RejectCode::UnsupportedFormat)),
        ("zero.gif", Some(RejectCode::ZeroSize)),
        ("bomb.png", Some(RejectCode::TooManyPixels)),
        ("a/directory.png", Some(RejectCode::Unreadable)),
        ("", Some(RejectCode::BadReference)),
    ];
    let references: Vec<&str> = cases.iter().map(|(r, _)| *r).collect();
    let results = load(&root, options(), &references);
    for ((reference, code), result) in cases.iter().zip(&results) {
        match code {
            None => assert_loaded(result, &good, "png", (64, 48)),
            Some(code) => assert_rejected(result, *code, reference),
        }
    }
}

#[test]
fn pixel_and_byte_caps_are_configurable() {
    let ws = Workspace::new();
    let root = ws.root();
    let bytes = png(64, 48);
    write(&root, "img.png", &bytes);
    let at_cap = LoadOptions {
        max_pixels: 64 * 48,
        ..options()
    };
    assert_loaded(&load_one(&root, at_cap, "img.png"), &bytes, "png", (64, 48));
    let below_cap = LoadOptions {
        max_pixels: 64 * 48 - 1,
        ..options()
    };
    assert_rejected(
        &load_one(&root, below_cap, "img.png"),
        RejectCode::TooManyPixels,
        "img.png",
    );
    let byte_cap = LoadOptions {
        max_bytes: bytes.len() as u64 - 1,
        ..options()
    };
    assert_rejected(
        &load_one(&root, byte_cap, "img.png"),
        RejectCode::TooManyBytes,
        "img.png",
    );
}

#[test]
fn paths_may_not_escape_the_root() {
    let ws = Workspace::new();
    let root = ws.root();
    let bytes = png(8, 8);
    let outside = write(&ws.outside(), "secret.png", &bytes);
    let inside = write(&root, "sub/inside.png", &bytes);
    let inside_absolute = inside.to_str().expect("utf-8 temp path").to_string();
    let outside_absolute = outside.to_str().expect("utf-8 temp path").to_string();

    let references = [
        "../secret.png",
        "sub/../../secret.png",
        "../does-not-exist.png",
        outside_absolute.as_str(),
        "/etc/hostname",
        "sub/../sub/inside.png",
        inside_absolute.as_str(),
    ];
    let results = load(&root, options(), &references);
    for (reference, result) in references.iter().zip(&results).take(5) {
        assert_rejected(result, RejectCode::PathEscapesRoot, reference);
    }
    assert_loaded(&results[5], &bytes, "png", (8, 8));
    assert_loaded(&results[6], &bytes, "png", (8, 8));
}

#[cfg(unix)]
#[test]
fn symlinks_out_of_the_root_are_refused() {
    let ws = Workspace::new();
    let root = ws.root();
    let bytes = png(8, 8);
    let outside = write(&ws.outside(), "secret.png", &bytes);
    write(&root, "real.png", &bytes);
    std::os::unix::fs::symlink(&outside, root.join("link-out.png")).expect("symlink");
    std::os::unix::fs::symlink(ws.outside(), root.join("dir-out")).expect("symlink");
    std::os::unix::fs::symlink(root.join("real.png"), root.join("link-in.png")).expect("symlink");

    let references = ["link-out.png", "dir-out/secret.png", "link-in.png"];
    let results = load(&root, options(), &references);
    assert_rejected(&results[0], RejectCode::PathEscapesRoot, references[0]);
    assert_rejected(&results[1], RejectCode::PathEscapesRoot, references[1]);
    assert_loaded(&results[2], &bytes, "png", (8, 8));
}

#[test]
fn identical_bytes_share_an_image_id_and_repeats_load_once() {
    let ws = Workspace::new();
    let root = ws.root();
    let bytes = encode(ImageFormat::Jpeg, 40, 30);
    write(&root, "a/first.jpg", &bytes);
    write(&root, "b/second.jpeg", &bytes);
    write(&root, "other.png", &png(40, 30));
    let results = load(
        &root,
        options(),
        &["a/first.jpg", "other.png", "b/second.jpeg", "a/first.jpg"],
    );
    let ids: Vec<&str> = results
        .iter()
        .map(|r| r.as_ref().expect("loads").image_id.as_str())
        .collect();
    assert_eq!(ids[0], sha256_hex(&bytes));
    assert_eq!(ids[0], ids[2]);
    assert_eq!(ids[0], ids[3]);
    assert_ne!(ids[0], ids[1]);
}

// ---------------------------------------------------------------------------------------------------------------
// Archives

fn zip_archive(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (i, (name, bytes)) in members.iter().enumerate() {
        // Alternate stored and deflated members: both must read back byte for byte.
        let method = if i % 2 == 0 {
            zip::CompressionMethod::Stored
        } else {
            zip::CompressionMethod::Deflated
        };
        let options = zip::write::SimpleFileOptions::default().compression_method(method);
        writer.start_file(*name, options).expect("zip member");
        writer.write_all(bytes).expect("zip data");
    }
    writer.finish().expect("zip finish").into_inner()
}

fn tar_archive(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, bytes) in members {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, name, *bytes)
            .expect("tar member");
    }
    builder.into_inner().expect("tar finish")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip finish")
}

#[test]
fn archive_members_read_back_and_missing_members_are_rejected() {
    let ws = Workspace::new();
    let root = ws.root();
    let a = png(16, 12);
    let b = encode(ImageFormat::Jpeg, 20, 10);
    let c = encode(ImageFormat::Gif, 8, 8);
    let long_name = format!("deep/{}/c.gif", "x".repeat(120));
    let members: [(&str, &[u8]); 3] = [("imgs/a.png", &a), ("imgs/b.jpg", &b), (&long_name, &c)];
    write(&root, "packs/set.zip", &zip_archive(&members));
    let tar = tar_archive(&members);
    write(&root, "packs/set.tar", &tar);
    write(&root, "packs/set.tar.gz", &gzip(&tar));
    write(&root, "packs/set.tgz", &gzip(&tar));
    write(
        &root,
        "packs/broken.zip",
        b"PK\x03\x04 this is not really a zip",
    );

    for archive in [
        "packs/set.zip",
        "packs/set.tar",
        "packs/set.tar.gz",
        "packs/set.tgz",
    ] {
        let references = [
            format!("{archive}!/imgs/b.jpg"),
            format!("{archive}!/imgs/a.png"),
            format!("{archive}!/{long_name}"),
            format!("{archive}!/imgs/nope.png"),
            format!("{archive}!/imgs/a.png"),
        ];
        let results = load(&root, options(), &references);
        assert_loaded(&results[0], &b, "jpeg", (20, 10));
        assert_loaded(&results[1], &a, "png", (16, 12));
        assert_loaded(&results[2], &c, "gif", (8, 8));
        assert_rejected(
            &results[3],
            RejectCode::ArchiveMemberMissing,
            &references[3],
        );
        assert_loaded(&results[4], &a, "png", (16, 12));
    }

    let references = [
        "packs/broken.zip!/imgs/a.png",
        "packs/absent.tar!/imgs/a.png",
        "../set.zip!/imgs/a.png",
        "packs/set.zip!/",
    ];
    let results = load(&root, options(), &references);
    assert_rejected(&results[0], RejectCode::Unreadable, references[0]);
    assert_rejected(&results[1], RejectCode::Missing, references[1]);
    assert_rejected(&results[2], RejectCode::PathEscapesRoot, references[2]);
    assert_rejected(&results[3], RejectCode::BadReference, references[3]);
}

#[test]
fn a_tar_cut_inside_a_member_rejects_that_member_only() {
    let ws = Workspace::new();
    let root = ws.root();
    let first = png(16, 16);
    let second = png(32, 32);
    let tar = tar_archive(&[("first.png", &first), ("second.png", &second)]);
    // Keep the first member whole and stop halfway through the second one's data.
    let cut = 512 + first.len().div_ceil(512) * 512 + 512 + second.len() / 2;
    write(&root, "cut.tar", &tar[..cut]);
    let references = ["cut.tar!/first.png", "cut.tar!/second.png"];
    let results = load(&root, options(), &references);
    assert_loaded(&results[0], &first, "png", (16, 16));
    assert_rejected(&results[1], RejectCode::Truncated, references[1]);
}

// ---------------------------------------------------------------------------------------------------------------
// Inputs are never modified

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("dir entry").path();
            let kind = fs::symlink_metadata(&path).expect("metadata").file_type();
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                let hash = sha256_hex(&fs::read(&path).expect("read file"));
                files.insert(path, hash);
            }
        }
    }
    files
}

#[test]
fn loading_leaves_every_input_file_unchanged() {
    let ws = Workspace::new();
    let root = ws.root();
    let good = png(24, 24);
    write(&root, "good.png", &good);
    write(&root, "cut.png", &good[..good.len() - 30]);
    write(&root, "text.png", b"plain text");
    write(&root, "bomb.png", &png_declaring(50_000, 50_000));
    write(&root, "set.tar", &tar_archive(&[("a.png", &good)]));
    write(&root, "set.zip", &zip_archive(&[("a.png", &good)]));
    write(&ws.outside(), "outside.png", &good);
    let before = snapshot(ws.dir.path());
    let references = [
        "good.png",
        "cut.png",
        "text.png",
        "bomb.png",
        "set.tar!/a.png",
        "set.zip!/a.png",
        "set.zip!/b.png",
        "../outside.png",
    ];
    let results = load(&root, options(), &references);
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 3);
    assert_eq!(
        snapshot(ws.dir.path()),
        before,
        "files were added, removed or changed"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// HTTP

#[test]
fn urls_load_and_transient_failures_are_retried() {
    let image = png(20, 20);
    let server = http::Server::start(image.clone());
    let ws = Workspace::new();
    let references = [
        server.url("/ok"),
        server.url("/flaky"),
        server.url("/busy"),
        server.url("/missing"),
        server.url("/always-500"),
        server.url("/ok"),
    ];
    let results = load(&ws.root(), options(), &references);
    assert_loaded(&results[0], &image, "png", (20, 20));
    assert_loaded(&results[1], &image, "png", (20, 20));
    assert_loaded(&results[2], &image, "png", (20, 20));
    assert_rejected(&results[3], RejectCode::HttpStatus, &references[3]);
    assert_rejected(&results[4], RejectCode::HttpStatus, &references[4]);
    assert_loaded(&results[5], &image, "png", (20, 20));

    assert_eq!(server.hits("/ok"), 1, "a repeated URL is fetched once");
    assert_eq!(server.hits("/flaky"), 2, "a 500 is retried");
    assert_eq!(server.hits("/busy"), 2, "a 429 is retried");
    assert_eq!(server.hits("/missing"), 1, "a 404 is not retried");
    assert_eq!(
        server.hits("/always-500"),
        3,
        "retries stop after the configured number"
    );
    let detail = &results[4].as_ref().expect_err("rejected").detail;
    assert!(
        detail.contains("503") && detail.contains("3 attempts"),
        "{detail}"
    );
}

#[test]
fn a_response_slower_than_the_timeout_is_a_timeout() {
    let server = http::Server::start(png(4, 4));
    let ws = Workspace::new();
    let options = LoadOptions {
        fetch: FetchConfig {
            request_timeout: Duration::from_millis(300),
            retries: 1,
            ..options().fetch
        },
        ..options()
    };
    let reference = server.url("/slow");
    let result = load_one(&ws.root(), options, &reference);
    assert_rejected(&result, RejectCode::Timeout, &reference);
    assert_eq!(server.wait_for_hits("/slow", 2), 2, "a timeout is retried");
}

#[test]
fn bodies_over_the_byte_cap_are_refused_and_abandoned() {
    let server = http::Server::start(png(4, 4));
    let ws = Workspace::new();
    let options = LoadOptions {
        fetch: FetchConfig {
            max_bytes: 256 * 1024,
            ..options().fetch
        },
        ..options()
    };
    let references = [server.url("/huge-declared"), server.url("/huge-streamed")];
    let results = load(&ws.root(), options, &references);
    assert_rejected(&results[0], RejectCode::TooManyBytes, &references[0]);
    assert_rejected(&results[1], RejectCode::TooManyBytes, &references[1]);
    assert!(results[0]
        .as_ref()
        .expect_err("rejected")
        .detail
        .contains("Content-Length"));
    assert_eq!(
        server.hits("/huge-declared"),
        1,
        "an oversize body is not retried"
    );
    assert_eq!(
        server.hits("/huge-streamed"),
        1,
        "an oversize body is not retried"
    );
    assert!(
        server.endless_written() < http::ENDLESS_BODY,
        "the client kept reading past its cap ({} bytes written)",
        server.endless_written()
    );
}

#[test]
fn no_more_requests_are_in_flight_than_the_concurrency_cap() {
    let image = png(6, 6);
    let server = http::Server::start(image.clone());
    let ws = Workspace::new();
    let cap = 3;
    let options = LoadOptions {
        fetch: FetchConfig {
            concurrency: cap,
            ..options().fetch
        },
        ..options()
    };
    let references: Vec<String> = (0..4 * cap)
        .map(|i| server.url(&format!("/gated/{cap}/{i}")))
        .collect();
    let results = load(&ws.root(), options, &references);
    for result in &results {
        assert_loaded(result, &image, "png", (6, 6));
    }
    assert_eq!(server.max_open(), cap, "requests in flight at once");
}

#[test]
fn unusable_urls_are_refused() {
    let ws = Workspace::new();
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let refused = format!("http://127.0.0.1:{closed_port}/img.png");
    let references = [
        "ftp://example.com/img.png",
        "file:///etc/passwd",
        "http://[::1/img.png",
        refused.as_str(),
    ];
    let results = load(&ws.root(), options(), &references);
    assert_rejected(&results[0], RejectCode::UnsupportedScheme, references[0]);
    assert_rejected(&results[1], RejectCode::UnsupportedScheme, references[1]);
    assert_rejected(&results[2], RejectCode::BadReference, references[2]);
    assert_rejected(&results[3], RejectCode::FetchFailed, references[3]);
}

#[test]
fn reject_codes_have_distinct_snake_case_names() {
    let names: Vec<&str> = RejectCode::ALL.iter().map(|c| c.as_str()).collect();
    let mut unique = names.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "{names:?}");
    for name in names {
        assert!(
            name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{name}"
        );
    }
}
