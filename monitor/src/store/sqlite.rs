//! The embedded store: one SQLite file in WAL mode, one writer connection
//! (every [`Commit`] one transaction) and one reader connection, so
//! queries never wait for a write. Every filter is a bound parameter; no
//! text a client sent ever becomes SQL.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, Transaction, params, params_from_iter};

use super::{
    AlertQuery, CheckRow, Commit, Committed, Delivery, EventQuery, GpuRollup, JobStats, Loaded, NodeRow, Rollup, Store,
    StoreError, StoredEvent,
};
use crate::alerts::{Alert, AlertChange, AlertStatus, AlertType, Severity};
use crate::registry::NodeState;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    stream_id TEXT UNIQUE,
    at_ms INTEGER NOT NULL,
    source_type TEXT NOT NULL,
    event_type TEXT NOT NULL,
    level TEXT NOT NULL,
    node TEXT,
    job_name TEXT,
    run_id TEXT,
    tenant TEXT,
    script_path TEXT,
    scheduled_for TEXT,
    message TEXT NOT NULL,
    meta TEXT
);
CREATE INDEX IF NOT EXISTS events_at ON events(at_ms);
CREATE INDEX IF NOT EXISTS events_job ON events(job_name, at_ms);
CREATE INDEX IF NOT EXISTS events_node ON events(node, at_ms);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY,
    alert_type TEXT NOT NULL,
    subject TEXT NOT NULL,
    node TEXT,
    job_name TEXT,
    severity TEXT NOT NULL,
    status TEXT NOT NULL,
    message TEXT NOT NULL,
    details TEXT NOT NULL,
    opened_at_ms INTEGER NOT NULL,
    closed_at_ms INTEGER,
    close_reason TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS alerts_one_open ON alerts(subject, alert_type) WHERE status = 'OPEN';
CREATE INDEX IF NOT EXISTS alerts_opened ON alerts(opened_at_ms);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    alert_id INTEGER NOT NULL,
    change TEXT NOT NULL,
    receiver TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    alert TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries(state, id);
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    interval_ms INTEGER NOT NULL,
    status TEXT,
    status_at_ms INTEGER,
    stopped_at_ms INTEGER
);
CREATE TABLE IF NOT EXISTS node_rollups (
    node TEXT NOT NULL,
    minute_ms INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    cpu_sum REAL,
    cpu_n INTEGER NOT NULL DEFAULT 0,
    memory_sum REAL,
    memory_n INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (node, minute_ms)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gpu_rollups (
    node TEXT NOT NULL,
    minute_ms INTEGER NOT NULL,
    gpu INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    util_sum REAL, util_n INTEGER NOT NULL DEFAULT 0,
    temp_sum REAL, temp_n INTEGER NOT NULL DEFAULT 0,
    mem_sum REAL, mem_n INTEGER NOT NULL DEFAULT 0,
    mem_total REAL,
    power_sum REAL, power_n INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (node, minute_ms, gpu)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checks (
    job_name TEXT PRIMARY KEY,
    last_run_ms INTEGER,
    last_success_ms INTEGER,
    last_failure_ms INTEGER,
    consecutive_failures INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (
    stream TEXT PRIMARY KEY,
    entry_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    digest BLOB PRIMARY KEY,
    expires_ms INTEGER NOT NULL
);
";

/// The SQLite store.
pub struct SqliteStore {
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
}

fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

impl SqliteStore {
    /// Open (creating it and its tables when new) the database at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let writer = open(path)?;
        writer.execute_batch(SCHEMA)?;
        let reader = open(path)?;
        Ok(SqliteStore {
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
        })
    }

    fn read<T>(&self, query: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let conn = self.reader.lock().expect("reader poisoned");
        query(&conn)
    }
}

fn ms(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn unms(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn write_alert(tx: &Transaction<'_>, alert: &Alert) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO alerts (id, alert_type, subject, node, job_name, severity, status, message, details,
                             opened_at_ms, closed_at_ms, close_reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
         ON CONFLICT(id) DO UPDATE SET status = excluded.status, details = excluded.details,
             closed_at_ms = excluded.closed_at_ms, close_reason = excluded.close_reason",
        params![
            alert.id,
            alert.alert_type.as_str(),
            alert.subject,
            alert.node,
            alert.job_name,
            alert.severity.as_str(),
            alert.status.as_str(),
            alert.message,
            alert.details.to_string(),
            ms(alert.opened_at_ms),
            alert.closed_at_ms.map(ms),
            alert.close_reason,
        ],
    )?;
    Ok(())
}

fn read_alert(row: &rusqlite::Row<'_>) -> rusqlite::Result<Alert> {
    let corrupt = |index: usize, what: &str| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, what.to_string().into())
    };
    let alert_type: String = row.get(1)?;
    let severity: String = row.get(5)?;
    let status: String = row.get(6)?;
    let details: String = row.get(8)?;
    Ok(Alert {
        id: row.get(0)?,
        alert_type: AlertType::parse(&alert_type).ok_or_else(|| corrupt(1, "alert type"))?,
        subject: row.get(2)?,
        node: row.get(3)?,
        job_name: row.get(4)?,
        severity: match severity.as_str() {
            "info" => Severity::Info,
            "warning" => Severity::Warning,
            "critical" => Severity::Critical,
            _ => return Err(corrupt(5, "severity")),
        },
        status: if status == "OPEN" {
            AlertStatus::Open
        } else {
            AlertStatus::Closed
        },
        message: row.get(7)?,
        details: serde_json::from_str(&details).map_err(|_| corrupt(8, "details"))?,
        opened_at_ms: unms(row.get(9)?),
        closed_at_ms: row.get::<_, Option<i64>>(10)?.map(unms),
        close_reason: row.get(11)?,
    })
}

const ALERT_COLUMNS: &str = "id, alert_type, subject, node, job_name, severity, status, message, details, opened_at_ms, closed_at_ms, close_reason";

fn read_event(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
    let level: String = row.get(5)?;
    let meta: Option<String> = row.get(13)?;
    Ok(StoredEvent {
        id: row.get(0)?,
        at_ms: unms(row.get(1)?),
        event: citadel_transports::fleet::FleetEvent {
            source_type: row.get(2)?,
            event_type: row.get(3)?,
            at: row.get(4)?,
            level: citadel_transports::fleet::Level::parse(&level).unwrap_or(citadel_transports::fleet::Level::Info),
            node: row.get(6)?,
            job_name: row.get(7)?,
            run_id: row.get(8)?,
            tenant: row.get(9)?,
            script_path: row.get(10)?,
            scheduled_for: row.get(11)?,
            message: row.get(12)?,
            meta: meta
                .and_then(|meta| serde_json::from_str(&meta).ok())
                .unwrap_or_default(),
        },
    })
}

const EVENT_COLUMNS: &str = "id, at_ms, source_type, event_type, NULL, level, node, job_name, run_id, tenant, \
                             script_path, scheduled_for, message, meta";

fn read_delivery(row: &rusqlite::Row<'_>) -> rusqlite::Result<Delivery> {
    Ok(Delivery {
        id: row.get(0)?,
        alert_id: row.get(1)?,
        change: row.get(2)?,
        receiver: row.get(3)?,
        state: row.get(4)?,
        attempts: row.get(5)?,
        last_error: row.get(6)?,
        alert: row.get(7)?,
    })
}

const DELIVERY_COLUMNS: &str = "id, alert_id, change, receiver, state, attempts, last_error, alert";

/// The percentile `p` of sorted `values`.
fn percentile(values: &[u64], p: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let rank = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

fn mean(sum: Option<f64>, n: i64) -> Option<f64> {
    sum.filter(|_| n > 0).map(|sum| sum / n as f64)
}

impl Store for SqliteStore {
    fn commit(&self, commit: Commit) -> Result<Committed, StoreError> {
        let mut conn = self.writer.lock().expect("writer poisoned");
        let tx = conn.transaction()?;
        let mut committed = Committed::default();
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO events (stream_id, at_ms, source_type, event_type, level, node, job_name,
                     run_id, tenant, script_path, scheduled_for, message, meta)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )?;
            for new in commit.events {
                let event = &new.event;
                let meta = (!event.meta.is_empty())
                    .then(|| serde_json::to_string(&event.meta).expect("a JSON map serializes"));
                let inserted = insert.execute(params![
                    new.stream_id,
                    ms(new.at_ms),
                    event.source_type,
                    event.event_type,
                    event.level.as_str(),
                    event.node,
                    event.job_name,
                    event.run_id,
                    event.tenant,
                    event.script_path,
                    event.scheduled_for,
                    event.message,
                    meta,
                ])?;
                if inserted == 1 {
                    committed.events.push(StoredEvent {
                        id: tx.last_insert_rowid(),
                        at_ms: new.at_ms,
                        event: new.event,
                    });
                }
            }
        }
        let now = citadel_transports::fleet::epoch_millis(std::time::SystemTime::now());
        for (index, change) in commit.alerts.iter().enumerate() {
            write_alert(&tx, change.alert())?;
            for (_, receiver) in commit.deliveries.iter().filter(|(of, _)| *of == index) {
                let kind = match change {
                    AlertChange::Closed(_) => "resolved",
                    _ => "firing",
                };
                tx.execute(
                    "INSERT INTO deliveries (alert_id, change, receiver, state, alert, created_ms)
                     VALUES (?1, ?2, ?3, 'pending', ?4, ?5)",
                    params![
                        change.alert().id,
                        kind,
                        receiver,
                        serde_json::to_string(change.alert()).expect("an alert serializes"),
                        ms(now)
                    ],
                )?;
            }
        }
        for node in &commit.nodes {
            tx.execute(
                "INSERT INTO nodes (id, state, last_seen_ms, first_seen_ms, interval_ms, status, status_at_ms, stopped_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(id) DO UPDATE SET state = excluded.state, last_seen_ms = excluded.last_seen_ms,
                     interval_ms = excluded.interval_ms, status = COALESCE(excluded.status, nodes.status),
                     status_at_ms = COALESCE(excluded.status_at_ms, nodes.status_at_ms),
                     stopped_at_ms = excluded.stopped_at_ms",
                params![
                    node.id,
                    node.state.as_str(),
                    ms(node.last_seen_ms),
                    ms(node.first_seen_ms),
                    ms(node.interval_ms),
                    node.status,
                    node.status_at_ms.map(ms),
                    node.stopped_at_ms.map(ms),
                ],
            )?;
        }
        for sample in &commit.samples {
            let minute = ms(sample.at_ms - sample.at_ms % 60_000);
            tx.execute(
                "INSERT INTO node_rollups (node, minute_ms, samples, cpu_sum, cpu_n, memory_sum, memory_n)
                 VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6)
                 ON CONFLICT(node, minute_ms) DO UPDATE SET samples = samples + 1,
                     cpu_sum = COALESCE(cpu_sum, 0) + COALESCE(excluded.cpu_sum, 0), cpu_n = cpu_n + excluded.cpu_n,
                     memory_sum = COALESCE(memory_sum, 0) + COALESCE(excluded.memory_sum, 0),
                     memory_n = memory_n + excluded.memory_n",
                params![
                    sample.node,
                    minute,
                    sample.cpu_percent,
                    i64::from(sample.cpu_percent.is_some()),
                    sample.memory_percent,
                    i64::from(sample.memory_percent.is_some()),
                ],
            )?;
            for gpu in &sample.gpus {
                tx.execute(
                    "INSERT INTO gpu_rollups (node, minute_ms, gpu, samples, util_sum, util_n, temp_sum, temp_n,
                         mem_sum, mem_n, mem_total, power_sum, power_n)
                     VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                     ON CONFLICT(node, minute_ms, gpu) DO UPDATE SET samples = samples + 1,
                         util_sum = COALESCE(util_sum, 0) + COALESCE(excluded.util_sum, 0), util_n = util_n + excluded.util_n,
                         temp_sum = COALESCE(temp_sum, 0) + COALESCE(excluded.temp_sum, 0), temp_n = temp_n + excluded.temp_n,
                         mem_sum = COALESCE(mem_sum, 0) + COALESCE(excluded.mem_sum, 0), mem_n = mem_n + excluded.mem_n,
                         mem_total = COALESCE(excluded.mem_total, mem_total),
                         power_sum = COALESCE(power_sum, 0) + COALESCE(excluded.power_sum, 0), power_n = power_n + excluded.power_n",
                    params![
                        sample.node,
                        minute,
                        gpu.index,
                        gpu.utilization_percent,
                        i64::from(gpu.utilization_percent.is_some()),
                        gpu.temperature_celsius,
                        i64::from(gpu.temperature_celsius.is_some()),
                        gpu.memory_used_mb,
                        i64::from(gpu.memory_used_mb.is_some()),
                        gpu.memory_total_mb,
                        gpu.power_watts,
                        i64::from(gpu.power_watts.is_some()),
                    ],
                )?;
            }
        }
        for check in &commit.checks {
            tx.execute(
                "INSERT INTO checks (job_name, last_run_ms, last_success_ms, last_failure_ms, consecutive_failures)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(job_name) DO UPDATE SET last_run_ms = excluded.last_run_ms,
                     last_success_ms = excluded.last_success_ms, last_failure_ms = excluded.last_failure_ms,
                     consecutive_failures = excluded.consecutive_failures",
                params![
                    check.job_name,
                    check.last_run_ms.map(ms),
                    check.last_success_ms.map(ms),
                    check.last_failure_ms.map(ms),
                    check.consecutive_failures,
                ],
            )?;
        }
        for (stream, entry_id) in &commit.cursors {
            tx.execute(
                "INSERT INTO cursors (stream, entry_id) VALUES (?1, ?2)
                 ON CONFLICT(stream) DO UPDATE SET entry_id = excluded.entry_id",
                params![stream, entry_id],
            )?;
        }
        tx.commit()?;
        Ok(committed)
    }

    fn load(&self) -> Result<Loaded, StoreError> {
        let conn = self.writer.lock().expect("writer poisoned");
        let open_alerts = conn
            .prepare(&format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE status = 'OPEN'"))?
            .query_map([], read_alert)?
            .collect::<Result<Vec<_>, _>>()?;
        let last_alert_id: i64 = conn.query_row("SELECT COALESCE(MAX(id), 0) FROM alerts", [], |row| row.get(0))?;
        let nodes = conn
            .prepare(
                "SELECT id, state, last_seen_ms, first_seen_ms, interval_ms, status, status_at_ms, stopped_at_ms FROM nodes",
            )?
            .query_map([], |row| {
                let state: String = row.get(1)?;
                Ok(NodeRow {
                    id: row.get(0)?,
                    state: NodeState::parse(&state).unwrap_or(NodeState::Down),
                    last_seen_ms: unms(row.get(2)?),
                    first_seen_ms: unms(row.get(3)?),
                    interval_ms: unms(row.get(4)?),
                    status: row.get(5)?,
                    status_at_ms: row.get::<_, Option<i64>>(6)?.map(unms),
                    stopped_at_ms: row.get::<_, Option<i64>>(7)?.map(unms),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let checks = conn
            .prepare(
                "SELECT job_name, last_run_ms, last_success_ms, last_failure_ms, consecutive_failures FROM checks",
            )?
            .query_map([], |row| {
                Ok(CheckRow {
                    job_name: row.get(0)?,
                    last_run_ms: row.get::<_, Option<i64>>(1)?.map(unms),
                    last_success_ms: row.get::<_, Option<i64>>(2)?.map(unms),
                    last_failure_ms: row.get::<_, Option<i64>>(3)?.map(unms),
                    consecutive_failures: row.get(4)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let cursors = conn
            .prepare("SELECT stream, entry_id FROM cursors")?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Loaded {
            open_alerts,
            last_alert_id,
            nodes,
            checks,
            cursors,
        })
    }

    fn events(&self, query: &EventQuery) -> Result<Vec<StoredEvent>, StoreError> {
        let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE 1 = 1");
        let mut values: Vec<rusqlite::types::Value> = Vec::new();
        let mut text = |column: &str, value: &Option<String>, sql: &mut String| {
            if let Some(value) = value {
                sql.push_str(&format!(" AND {column} = ?"));
                values.push(value.clone().into());
            }
        };
        text("job_name", &query.job_name, &mut sql);
        text("script_path", &query.script_path, &mut sql);
        text("level", &query.level, &mut sql);
        text("event_type", &query.event_type, &mut sql);
        text("node", &query.node, &mut sql);
        text("tenant", &query.tenant, &mut sql);
        text("run_id", &query.run_id, &mut sql);
        if let Some(from) = query.from_ms {
            sql.push_str(" AND at_ms >= ?");
            values.push(ms(from).into());
        }
        if let Some(to) = query.to_ms {
            sql.push_str(" AND at_ms < ?");
            values.push(ms(to).into());
        }
        if let Some(after) = query.after_id {
            sql.push_str(" AND id > ?");
            values.push(after.into());
        }
        sql.push_str(if query.ascending {
            " ORDER BY id ASC"
        } else {
            " ORDER BY at_ms DESC, id DESC"
        });
        sql.push_str(" LIMIT ? OFFSET ?");
        values.push(i64::from(query.limit).into());
        values.push(i64::from(query.offset).into());
        self.read(|conn| {
            Ok(conn
                .prepare_cached(&sql)?
                .query_map(params_from_iter(values), read_event)?
                .collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn alerts(&self, query: &AlertQuery) -> Result<Vec<Alert>, StoreError> {
        let mut sql = format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE 1 = 1");
        let mut values: Vec<rusqlite::types::Value> = Vec::new();
        let mut text = |column: &str, value: Option<String>, sql: &mut String| {
            if let Some(value) = value {
                sql.push_str(&format!(" AND {column} = ?"));
                values.push(value.into());
            }
        };
        text("job_name", query.job_name.clone(), &mut sql);
        text("node", query.node.clone(), &mut sql);
        text(
            "status",
            query.status.map(|status| status.as_str().to_string()),
            &mut sql,
        );
        text(
            "alert_type",
            query.alert_type.map(|kind| kind.as_str().to_string()),
            &mut sql,
        );
        text(
            "severity",
            query.severity.map(|severity| severity.as_str().to_string()),
            &mut sql,
        );
        sql.push_str(" ORDER BY id DESC LIMIT ? OFFSET ?");
        values.push(i64::from(query.limit).into());
        values.push(i64::from(query.offset).into());
        self.read(|conn| {
            Ok(conn
                .prepare_cached(&sql)?
                .query_map(params_from_iter(values), read_alert)?
                .collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn history(&self, node: &str, from_ms: u64) -> Result<Vec<Rollup>, StoreError> {
        self.read(|conn| {
            let mut rollups: Vec<Rollup> = conn
                .prepare_cached(
                    "SELECT minute_ms, cpu_sum, cpu_n, memory_sum, memory_n FROM node_rollups
                     WHERE node = ?1 AND minute_ms >= ?2 ORDER BY minute_ms",
                )?
                .query_map(params![node, ms(from_ms)], |row| {
                    Ok(Rollup {
                        minute_ms: unms(row.get(0)?),
                        cpu_percent: mean(row.get(1)?, row.get(2)?),
                        memory_percent: mean(row.get(3)?, row.get(4)?),
                        gpus: Vec::new(),
                    })
                })?
                .collect::<Result<_, _>>()?;
            let mut gpus = conn.prepare_cached(
                "SELECT minute_ms, gpu, util_sum, util_n, temp_sum, temp_n, mem_sum, mem_n, mem_total, power_sum, power_n
                 FROM gpu_rollups WHERE node = ?1 AND minute_ms >= ?2 ORDER BY minute_ms, gpu",
            )?;
            let rows = gpus.query_map(params![node, ms(from_ms)], |row| {
                Ok((
                    unms(row.get(0)?),
                    GpuRollup {
                        index: row.get(1)?,
                        utilization_percent: mean(row.get(2)?, row.get(3)?),
                        temperature_celsius: mean(row.get(4)?, row.get(5)?),
                        memory_used_mb: mean(row.get(6)?, row.get(7)?),
                        memory_total_mb: row.get(8)?,
                        power_watts: mean(row.get(9)?, row.get(10)?),
                    },
                ))
            })?;
            for row in rows {
                let (minute, gpu) = row?;
                if let Some(rollup) = rollups.iter_mut().find(|rollup| rollup.minute_ms == minute) {
                    rollup.gpus.push(gpu);
                }
            }
            Ok(rollups)
        })
    }

    fn job_stats(&self, job_name: Option<&str>, from_ms: u64) -> Result<Vec<JobStats>, StoreError> {
        self.read(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT job_name, event_type, CAST(json_extract(meta, '$.durationMs') AS INTEGER),
                        json_extract(meta, '$.willRetry')
                 FROM events INDEXED BY events_job
                 WHERE job_name IS NOT NULL AND (?1 IS NULL OR job_name = ?1) AND at_ms >= ?2
                   AND event_type IN ('job.completed', 'job.failed', 'job.dead_lettered')",
            )?;
            let rows = statement.query_map(params![job_name, ms(from_ms)], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, Option<i64>>(2)?,
                    row.get::<_, Option<i64>>(3)?,
                ))
            })?;
            let mut by_type: std::collections::BTreeMap<String, (u64, u64, Vec<u64>)> = Default::default();
            for row in rows {
                let (name, kind, duration, will_retry) = row?;
                let entry = by_type.entry(name).or_default();
                if kind == "job.failed" && will_retry == Some(1) {
                    continue;
                }
                entry.0 += 1;
                if kind != "job.completed" {
                    entry.1 += 1;
                }
                if let Some(duration) = duration {
                    entry.2.push(unms(duration));
                }
            }
            Ok(by_type
                .into_iter()
                .map(|(job_name, (runs, failures, mut durations))| {
                    durations.sort_unstable();
                    JobStats {
                        job_name,
                        runs,
                        failures,
                        p50_ms: percentile(&durations, 0.5),
                        p95_ms: percentile(&durations, 0.95),
                    }
                })
                .collect())
        })
    }

    fn pending_deliveries(&self, limit: u32) -> Result<Vec<Delivery>, StoreError> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE state = 'pending' ORDER BY id LIMIT ?1"
                ))?
                .query_map(params![limit], read_delivery)?
                .collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn delivery_attempted(&self, id: i64, error: Option<&str>, give_up: bool) -> Result<(), StoreError> {
        let conn = self.writer.lock().expect("writer poisoned");
        let state = match (error, give_up) {
            (None, _) => "delivered",
            (Some(_), true) => "failed",
            (Some(_), false) => "pending",
        };
        conn.execute(
            "UPDATE deliveries SET state = ?2, attempts = attempts + 1, last_error = ?3 WHERE id = ?1",
            params![id, state, error],
        )?;
        Ok(())
    }

    fn deliveries(&self, alert_id: i64) -> Result<Vec<Delivery>, StoreError> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE alert_id = ?1 ORDER BY id"
                ))?
                .query_map(params![alert_id], read_delivery)?
                .collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn prune(&self, before_ms: u64, batch: u32) -> Result<u64, StoreError> {
        let conn = self.writer.lock().expect("writer poisoned");
        let mut gone = 0;
        for sql in [
            "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at_ms < ?1 LIMIT ?2)",
            "DELETE FROM alerts WHERE id IN
                 (SELECT id FROM alerts WHERE status = 'CLOSED' AND closed_at_ms < ?1 LIMIT ?2)",
            "DELETE FROM node_rollups WHERE (node, minute_ms) IN
                 (SELECT node, minute_ms FROM node_rollups WHERE minute_ms < ?1 LIMIT ?2)",
            "DELETE FROM gpu_rollups WHERE (node, minute_ms, gpu) IN
                 (SELECT node, minute_ms, gpu FROM gpu_rollups WHERE minute_ms < ?1 LIMIT ?2)",
        ] {
            gone += conn.execute(sql, params![ms(before_ms), batch])? as u64;
        }
        let now = crate::service::now_ms();
        conn.execute("DELETE FROM sessions WHERE expires_ms <= ?1", params![ms(now)])?;
        Ok(gone)
    }

    fn session_opened(&self, digest: &[u8; 32], expires_ms: u64) -> Result<(), StoreError> {
        let conn = self.writer.lock().expect("writer poisoned");
        conn.execute(
            "INSERT OR REPLACE INTO sessions (digest, expires_ms) VALUES (?1, ?2)",
            params![&digest[..], ms(expires_ms)],
        )?;
        Ok(())
    }

    fn session_closed(&self, digest: &[u8; 32]) -> Result<(), StoreError> {
        let conn = self.writer.lock().expect("writer poisoned");
        conn.execute("DELETE FROM sessions WHERE digest = ?1", params![&digest[..]])?;
        Ok(())
    }

    fn sessions(&self, now_ms: u64) -> Result<Vec<([u8; 32], u64)>, StoreError> {
        self.read(|conn| {
            let rows = conn
                .prepare_cached("SELECT digest, expires_ms FROM sessions WHERE expires_ms > ?1")?
                .query_map(params![ms(now_ms)], |row| {
                    Ok((row.get::<_, Vec<u8>>(0)?, unms(row.get(1)?)))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows
                .into_iter()
                .filter_map(|(digest, expires)| Some((<[u8; 32]>::try_from(digest).ok()?, expires)))
                .collect())
        })
    }

    fn footprint(&self) -> Result<(u64, u64), StoreError> {
        self.read(|conn| {
            let pages: i64 = conn.query_row("PRAGMA page_count", [], |row| row.get(0))?;
            let size: i64 = conn.query_row("PRAGMA page_size", [], |row| row.get(0))?;
            let events: i64 = conn.query_row("SELECT COUNT(*) FROM events", [], |row| row.get(0))?;
            Ok((unms(pages * size), unms(events)))
        })
    }
}

#[cfg(test)]
mod tests {
    use citadel_transports::fleet::{FleetEvent, Level};

    use super::*;
    use crate::alerts::{Alerts, NewAlert};
    use crate::store::NewEvent;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("monitor.sqlite")).unwrap();
        (dir, store)
    }

    fn event(stream_id: &str, job: &str, at_ms: u64) -> NewEvent {
        NewEvent {
            stream_id: Some(stream_id.into()),
            at_ms,
            event: FleetEvent::new("job.completed", Level::Info, "gpu-1", "done")
                .for_job(job, stream_id, "acme")
                .with("durationMs", at_ms % 100),
        }
    }

    #[test]
    fn an_entry_is_stored_once_and_filters_are_values_not_sql() {
        let (_dir, store) = store();
        let commit = Commit {
            events: vec![
                event("1-0", "etl", 1_000),
                event("2-0", "etl", 2_000),
                event("3-0", "x", 3_000),
            ],
            cursors: vec![("s".into(), "3-0".into())],
            ..Commit::default()
        };
        assert_eq!(store.commit(commit.clone()).unwrap().events.len(), 3);
        assert_eq!(store.commit(commit).unwrap().events.len(), 0, "the same entries again");
        let etl = EventQuery {
            job_name: Some("etl".into()),
            limit: 10,
            ..EventQuery::default()
        };
        let found = store.events(&etl).unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].at_ms, 2_000, "newest first");
        let hostile = EventQuery {
            job_name: Some("etl' OR '1'='1".into()),
            limit: 10,
            ..EventQuery::default()
        };
        assert!(store.events(&hostile).unwrap().is_empty());
        assert_eq!(
            store.load().unwrap().cursors,
            vec![("s".to_string(), "3-0".to_string())]
        );
        let stats = store.job_stats(Some("etl"), 0).unwrap();
        assert_eq!(stats[0].runs, 2);
        assert_eq!(stats[0].p50_ms, Some(0));
    }

    #[test]
    fn open_alerts_and_pending_deliveries_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("monitor.sqlite");
        let mut alerts = Alerts::resume(Vec::new(), 0, 1000);
        let opened = alerts
            .raise(
                NewAlert {
                    alert_type: AlertType::NodeDown,
                    subject: "node:a".into(),
                    node: Some("a".into()),
                    job_name: None,
                    message: "down".into(),
                    details: serde_json::json!({"orphans": ["job-1"]}),
                },
                5,
            )
            .unwrap();
        {
            let store = SqliteStore::open(&path).unwrap();
            store
                .commit(Commit {
                    alerts: vec![opened.clone()],
                    deliveries: vec![(0, "http://hook".into())],
                    ..Commit::default()
                })
                .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.open_alerts, vec![opened.alert().clone()]);
        assert_eq!(loaded.last_alert_id, 1);
        let pending = store.pending_deliveries(10).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].change, "firing");
        store.delivery_attempted(pending[0].id, None, false).unwrap();
        assert!(store.pending_deliveries(10).unwrap().is_empty());
        assert_eq!(store.deliveries(1).unwrap()[0].state, "delivered");
    }

    #[test]
    fn pruning_goes_in_small_batches() {
        let (_dir, store) = store();
        let events = (0..25).map(|i| event(&format!("{i}-0"), "etl", i)).collect();
        store
            .commit(Commit {
                events,
                ..Commit::default()
            })
            .unwrap();
        assert_eq!(store.prune(20, 10).unwrap(), 10);
        assert_eq!(store.prune(20, 10).unwrap(), 10);
        assert_eq!(store.prune(20, 10).unwrap(), 0);
        assert_eq!(store.footprint().unwrap().1, 5);
    }
}
