//! `distc top`: a live view of this machine's cache and its mesh, refreshed about once a
//! second; `q` quits. `--once` prints one frame as plain text for scripts.
//!
//! Everything shown is read, never computed on the build's path: the wrappers' counters
//! (`$DISTC_DIR/stats`), the store's usage file, the ring of recent compiles
//! ([`crate::events`]), and — when a peer runs — its view of the mesh and its own counters
//! over the IPC socket. Without a peer the view shows the local cache only.
//!
//! One [`draw`] renders both the live view and `--once` (into an off-screen buffer), so
//! what a script sees is what a person sees. Over a slow terminal only changed cells are
//! sent (ratatui diffs frames), and a frame is drawn once a second or on a key or resize.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use distc_peer::ipc::IpcClient;
use distc_peer::metrics::PeerCounters;
use distc_peer::report::StatusReport;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Sparkline, Table};

use crate::cache::events::{self, Outcome, Record};
use crate::cli::build::human_bytes;
use crate::cli::stats::Report;
use crate::config::Config;

/// How far back the hit-rate sparkline looks.
const SPARK_WINDOW: Duration = Duration::from_secs(5 * 60);
/// One sparkline bar covers this long.
const SPARK_BUCKET: Duration = Duration::from_secs(10);
/// How long to wait for the local peer's answers before showing the local cache only.
const PEER_TIMEOUT: Duration = Duration::from_millis(500);
/// Refresh period of the live view.
const REFRESH: Duration = Duration::from_secs(1);

/// Everything one frame shows, gathered at once.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When it was gathered, ms since the epoch.
    pub now_ms: u64,
    pub dir: PathBuf,
    pub max_size: u64,
    /// The wrappers' counters and the store's usage (`distc stats`).
    pub report: Report,
    /// The mesh as the local peer sees it; `None` without a running peer.
    pub status: Option<StatusReport>,
    /// The local peer's own counters (absent from a peer older than this client).
    pub peer_counters: Option<PeerCounters>,
    /// Recent compiles within the sparkline window, oldest first.
    pub recent: Vec<Record>,
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Reads everything a frame needs. Only the cache directory being unreadable is an error.
pub fn gather(config: &Config) -> Result<Snapshot> {
    let now_ms = unix_ms_now();
    let report = Report::load(config)?;
    let since = now_ms.saturating_sub(SPARK_WINDOW.as_millis() as u64);
    let recent = events::read_since(&config.dir, since).with_context(|| {
        format!(
            "cannot read the recent compiles in {}",
            config.dir.join("events").display()
        )
    })?;
    let (status, peer_counters) = match IpcClient::connect(&config.dir, PEER_TIMEOUT) {
        Ok(mut c) => {
            let status = c.status().ok();
            let counters = status.as_ref().and_then(|_| c.counters().ok());
            (status, counters)
        }
        Err(_) => (None, None),
    };
    Ok(Snapshot {
        now_ms,
        dir: config.dir.clone(),
        max_size: config.max_size,
        report,
        status,
        peer_counters,
        recent,
    })
}

/// Hit rate per [`SPARK_BUCKET`] over [`SPARK_WINDOW`], oldest first, as sparkline values:
/// `None` for a bucket without lookups, else the percentage.
pub fn hit_rates(recent: &[Record], now_ms: u64) -> Vec<Option<u64>> {
    let bucket = SPARK_BUCKET.as_millis() as u64;
    let n = (SPARK_WINDOW.as_millis() as u64 / bucket) as usize;
    let start = now_ms.saturating_sub(n as u64 * bucket);
    let mut hits = vec![0u64; n];
    let mut lookups = vec![0u64; n];
    for r in recent {
        if r.unix_ms < start {
            continue;
        }
        let i = (((r.unix_ms - start) / bucket) as usize).min(n - 1);
        match r.outcome {
            Outcome::Hit | Outcome::RemoteHit => {
                hits[i] += 1;
                lookups[i] += 1;
            }
            Outcome::Miss => lookups[i] += 1,
            Outcome::Uncacheable => {}
        }
    }
    hits.iter()
        .zip(&lookups)
        .map(|(h, l)| (*l > 0).then(|| h * 100 / l))
        .collect()
}

/// `HH:MM:SS` in local time.
fn clock(unix_ms: u64) -> String {
    let secs = (unix_ms / 1000) as libc::time_t;
    // SAFETY: localtime_r writes into the struct we own; both pointers are valid.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    if !ok {
        return "--:--:--".into();
    }
    format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
}

fn took(us: u64) -> String {
    match us {
        0..=9_999 => format!("{:.1} ms", us as f64 / 1000.0),
        10_000..=9_999_999 => format!("{} ms", us / 1000),
        _ => format!("{:.1} s", us as f64 / 1e6),
    }
}

/// The end of a long string, so a path keeps its file name.
fn tail(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        return s.to_string();
    }
    let skip = n - width.saturating_sub(1);
    format!("…{}", s.chars().skip(skip).collect::<String>())
}

fn outcome_style(o: Outcome) -> Style {
    match o {
        Outcome::Hit => Style::default().fg(Color::Green),
        Outcome::RemoteHit => Style::default().fg(Color::Cyan),
        Outcome::Miss => Style::default().fg(Color::Yellow),
        Outcome::Uncacheable => Style::default().fg(Color::DarkGray),
    }
}

fn state_style(state: &str) -> Style {
    match state {
        "self" | "up" => Style::default().fg(Color::Green),
        "suspect" => Style::default().fg(Color::Yellow),
        _ => Style::default().fg(Color::Red),
    }
}

/// Rows the mesh table needs (peers, or one line saying there is no peer).
fn mesh_rows(s: &Snapshot) -> u16 {
    s.status
        .as_ref()
        .map_or(1, |st| st.peers.len().max(1) as u16 + 1)
}

/// Draws one frame of the view into `frame`'s whole area.
pub fn draw(frame: &mut Frame, s: &Snapshot) {
    let [title, cache, mesh, spark, recent] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(4),
        Constraint::Length(mesh_rows(s) + 2),
        Constraint::Length(4),
        Constraint::Min(3),
    ])
    .areas(frame.area());
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled("distc top", Style::default().add_modifier(Modifier::BOLD)),
            Span::raw(format!(
                "  {}  {}  (q quits)",
                s.dir.display(),
                clock(s.now_ms)
            )),
        ])),
        title,
    );
    draw_cache(frame, cache, s);
    draw_mesh(frame, mesh, s);
    draw_spark(frame, spark, s);
    draw_recent(frame, recent, s);
}

fn draw_cache(frame: &mut Frame, area: Rect, s: &Snapshot) {
    let c = &s.report.counters;
    let uncacheable: u64 = c.uncacheable.values().sum();
    let mut reasons: Vec<(&String, &u64)> = c.uncacheable.iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(a.1));
    let reasons: Vec<String> = reasons
        .iter()
        .take(4)
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    let lines = vec![
        Line::from(format!(
            "Hits {} (local {}, from peers {})   Misses {}   Hit rate {:.1} %   Errors {}",
            c.hits,
            c.local_hits,
            c.remote_hits,
            c.misses,
            s.report.hit_rate() * 100.0,
            c.errors
        )),
        Line::from(format!(
            "Uncacheable {uncacheable}{}   Stored {} in {} entries of {} max",
            if reasons.is_empty() {
                String::new()
            } else {
                format!(" ({})", reasons.join(", "))
            },
            human_bytes(s.report.usage.bytes),
            s.report.usage.entries,
            human_bytes(s.max_size)
        )),
    ];
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" This machine's cache ")),
        area,
    );
}

fn draw_mesh(frame: &mut Frame, area: Rect, s: &Snapshot) {
    let Some(st) = &s.status else {
        frame.render_widget(
            Paragraph::new("No peer running: local cache only (start one with `distc peer`)")
                .block(Block::bordered().title(" Mesh ")),
            area,
        );
        return;
    };
    let served = s
        .peer_counters
        .as_ref()
        .map(|c| c.served_hits.to_string())
        .unwrap_or_else(|| "-".into());
    let rows = st.peers.iter().map(|p| {
        let is_self = p.state == "self";
        Row::new(vec![
            Cell::from(tail(&p.id, 20)),
            Cell::from(p.state.clone()).style(state_style(&p.state)),
            Cell::from(p.entries.to_string()),
            Cell::from(human_bytes(p.bytes)),
            Cell::from(format!("{:.1}%", p.ring_share)),
            Cell::from(if is_self { served.clone() } else { "-".into() }),
            Cell::from(p.addrs.first().cloned().unwrap_or_default()),
        ])
    });
    let title = match &st.mesh_key {
        Some(fp) => format!(" Mesh: closed (key {fp}), R = {} ", st.replication),
        None => format!(
            " Mesh: no key (this machine only, or open), R = {} ",
            st.replication
        ),
    };
    let table = Table::new(
        rows,
        [
            Constraint::Length(20),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(10),
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Min(10),
        ],
    )
    .header(
        Row::new(vec![
            "PEER", "STATE", "ENTRIES", "BYTES", "RING", "SERVED", "ADDRESS",
        ])
        .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(Block::bordered().title(title));
    frame.render_widget(table, area);
}

fn draw_spark(frame: &mut Frame, area: Rect, s: &Snapshot) {
    let rates = hit_rates(&s.recent, s.now_ms);
    let (hits, lookups) = s.recent.iter().fold((0, 0), |(h, l), r| match r.outcome {
        Outcome::Hit | Outcome::RemoteHit => (h + 1, l + 1),
        Outcome::Miss => (h, l + 1),
        Outcome::Uncacheable => (h, l),
    });
    let summary = if lookups == 0 {
        "no cacheable compiles".to_string()
    } else {
        format!("{:.0} % of {lookups}", hits as f64 * 100.0 / lookups as f64)
    };
    // A bucket with lookups shows its rate + 1, so 0 % is a visible stub and a bucket with
    // no compiles at all stays blank.
    // Each bucket is repeated to fill the width, so the newest is at the right edge.
    let repeat = (area.width.saturating_sub(2) as usize / rates.len().max(1)).max(1);
    let data: Vec<u64> = rates
        .iter()
        .flat_map(|r| std::iter::repeat_n(r.map_or(0, |p| p + 1), repeat))
        .collect();
    let block = Block::bordered().title(format!(
        " Hit rate, last {} min, {} s per bar: {summary} ",
        SPARK_WINDOW.as_secs() / 60,
        SPARK_BUCKET.as_secs()
    ));
    frame.render_widget(
        Sparkline::default()
            .block(block)
            .data(&data)
            .max(101)
            .style(Style::default().fg(Color::Green)),
        area,
    );
}

fn draw_recent(frame: &mut Frame, area: Rect, s: &Snapshot) {
    let visible = area.height.saturating_sub(3) as usize;
    let source_width = area.width.saturating_sub(8 + 12 + 18 + 9 + 8) as usize;
    let rows = s.recent.iter().rev().take(visible).map(|r| {
        let result = match (&r.outcome, &r.reason) {
            (Outcome::Uncacheable, Some(reason)) => format!("uncacheable: {reason}"),
            (o, _) => o.label().to_string(),
        };
        Row::new(vec![
            Cell::from(clock(r.unix_ms)),
            Cell::from(result).style(outcome_style(r.outcome)),
            Cell::from(took(r.duration_us)),
            Cell::from(tail(&r.source, source_width.max(10))),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(8),
            Constraint::Length(30),
            Constraint::Length(9),
            Constraint::Min(10),
        ],
    )
    .header(
        Row::new(vec!["TIME", "RESULT", "TOOK", "SOURCE"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(Block::bordered().title(format!(
        " Recent compiles on this machine ({} in {} min) ",
        s.recent.len(),
        SPARK_WINDOW.as_secs() / 60
    )));
    frame.render_widget(table, area);
}

/// One frame as plain text, `width` columns wide, tall enough for the mesh and the last
/// `recent` compiles. Trailing spaces are trimmed.
pub fn render_text(s: &Snapshot, width: u16, recent: u16) -> Result<String> {
    let height = 1 + 4 + mesh_rows(s) + 2 + 4 + recent + 3;
    let backend = ratatui::backend::TestBackend::new(width, height);
    let mut terminal = ratatui::Terminal::new(backend).context("cannot set up the frame")?;
    terminal
        .draw(|f| draw(f, s))
        .context("cannot draw the frame")?;
    let buffer = terminal.backend().buffer();
    let mut out = String::new();
    for y in 0..buffer.area.height {
        let line: String = (0..buffer.area.width)
            .map(|x| buffer[(x, y)].symbol())
            .collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    Ok(out)
}

/// `distc top [--once]`.
pub fn top(config: &Config, once: bool) -> Result<ExitCode> {
    if once || !std::io::stdout().is_terminal() {
        let width = ratatui::crossterm::terminal::size()
            .map(|(w, _)| w)
            .unwrap_or(100)
            .clamp(60, 200);
        let snapshot = gather(config)?;
        let rows = snapshot.recent.len().clamp(1, 15) as u16;
        print!("{}", render_text(&snapshot, width, rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut terminal = ratatui::try_init().context("cannot take over the terminal")?;
    let result = live(&mut terminal, config);
    ratatui::restore();
    result.map(|()| ExitCode::SUCCESS)
}

fn live(terminal: &mut ratatui::DefaultTerminal, config: &Config) -> Result<()> {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
    let mut snapshot = gather(config)?;
    let mut next = Instant::now() + REFRESH;
    loop {
        terminal
            .draw(|f| draw(f, &snapshot))
            .context("cannot draw to the terminal")?;
        let wait = next.saturating_duration_since(Instant::now());
        if event::poll(wait).context("cannot read the terminal")? {
            match event::read().context("cannot read the terminal")? {
                Event::Key(k) if k.kind == KeyEventKind::Press => match k.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                        return Ok(());
                    }
                    _ => {}
                },
                // A resize redraws at once with the data we have.
                _ => continue,
            }
        }
        if Instant::now() >= next {
            snapshot = gather(config)?;
            next = Instant::now() + REFRESH;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(unix_ms: u64, outcome: Outcome) -> Record {
        Record {
            unix_ms,
            pid: 1,
            outcome,
            reason: None,
            duration_us: 1500,
            source: "src/a.c".into(),
        }
    }

    #[test]
    fn hit_rates_per_bucket() {
        let now = 1_000_000_000;
        let recent = vec![
            record(now - 1000, Outcome::Hit),
            record(now - 900, Outcome::Miss),
            record(now - 800, Outcome::Uncacheable),
            record(now - 25_000, Outcome::Miss),
            record(now - 10 * 60_000, Outcome::Hit),
        ];
        let r = hit_rates(&recent, now);
        assert_eq!(r.len(), 30);
        assert_eq!(r[29], Some(50));
        assert_eq!(r[27], Some(0));
        assert_eq!(r.iter().filter(|b| b.is_some()).count(), 2);
    }

    #[test]
    fn frame_without_a_peer() {
        let now = unix_ms_now();
        let mut unc = record(now - 500, Outcome::Uncacheable);
        unc.reason = Some("linking".into());
        unc.source = "gcc".into();
        let s = Snapshot {
            now_ms: now,
            dir: "/tmp/cache".into(),
            max_size: 1 << 30,
            report: Report {
                counters: crate::cache::stats::Stats {
                    hits: 1,
                    local_hits: 1,
                    misses: 1,
                    ..Default::default()
                },
                usage: Default::default(),
            },
            status: None,
            peer_counters: None,
            recent: vec![
                record(now - 2000, Outcome::Miss),
                record(now - 1000, Outcome::Hit),
                unc,
            ],
        };
        let text = render_text(&s, 100, 5).unwrap();
        assert!(text.contains("No peer running: local cache only"), "{text}");
        assert!(text.contains("Hits 1 (local 1, from peers 0)"), "{text}");
        assert!(text.contains("uncacheable: linking"), "{text}");
        assert!(text.contains("50 % of 2"), "{text}");
        let hit = text.lines().position(|l| l.contains(" hit ")).unwrap();
        let miss = text.lines().position(|l| l.contains(" miss ")).unwrap();
        assert!(hit < miss, "newest first:\n{text}");
    }

    #[test]
    fn long_sources_keep_their_file_name() {
        assert_eq!(tail("a/b/c/file.c", 8), "…/file.c");
        assert_eq!(tail("file.c", 8), "file.c");
    }
}
