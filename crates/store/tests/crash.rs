//! Crash test: a child process (this test binary re-executed) publishes persistent messages
//! and acks some, printing each confirmed publish and each confirmed ack; the parent kills
//! it with SIGKILL at a random moment, reopens the store and checks that every confirmed
//! message is there, in order, with its body, and that no confirmed ack came back. A third
//! queue gets messages acked right after their publish (the writer usually drops such pairs
//! unwritten): none whose ack was confirmed may come back either.

mod common;

use std::collections::{BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{body, header, open};
use lockgate_store::{QueueId, Recovery, Store, StoredRef};

const CHILD_ENV: &str = "LOCKGATE_STORE_CRASH_CHILD";
const CYCLES: usize = 5;
const WINDOW: u64 = 16;

fn queue_ids(store: &Store, recovery: &Recovery) -> (QueueId, QueueId, QueueId) {
    let find = |key: &[u8]| {
        recovery
            .queues
            .iter()
            .find(|q| &q.key[..] == key)
            .map(|q| q.id)
            .unwrap_or_else(|| {
                let (id, c) = store.put_queue(key, b"");
                c.wait_blocking().expect("commit");
                id
            })
    };
    (find(b"work"), find(b"audit"), find(b"fleeting"))
}

/// The child: runs until killed. Not a test of its own (returns at once without the env).
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (store, recovery) = open(Path::new(&dir));
    let (work, audit, fleeting) = queue_ids(&store, &recovery);
    let mut next = recovery
        .queues
        .iter()
        .map(|q| q.next_seq)
        .max()
        .unwrap_or(0);
    let mut next_fleeting = next;
    let mut unacked: VecDeque<StoredRef> = store
        .queue_index(work)
        .map(|e| {
            let e = e.expect("index entry");
            StoredRef {
                queue: work,
                seq: e.seq,
                message: e.message,
            }
        })
        .collect();
    let out = std::io::stdout();
    loop {
        let commits: Vec<_> = (next..next + WINDOW)
            .map(|seq| {
                let (message, c) =
                    store.publish(header(seq), body(seq, 700), &[(work, seq), (audit, seq)]);
                (seq, message, c)
            })
            .collect();
        next += WINDOW;
        // Acked as soon as published, as by a consumer faster than the flush.
        let fleeting_refs: Vec<_> = (next_fleeting..next_fleeting + WINDOW)
            .map(|seq| StoredRef {
                queue: fleeting,
                seq,
                message: store
                    .publish(header(seq), body(seq, 700), &[(fleeting, seq)])
                    .0,
            })
            .collect();
        next_fleeting += WINDOW;
        let gone = store.remove_many(fleeting_refs.iter().copied());
        for (seq, message, c) in commits {
            c.wait_blocking().expect("commit");
            unacked.push_back(StoredRef {
                queue: work,
                seq,
                message,
            });
            writeln!(out.lock(), "confirmed {seq}").expect("stdout");
        }
        gone.wait_blocking().expect("commit");
        for r in &fleeting_refs {
            writeln!(out.lock(), "gone {}", r.seq).expect("stdout");
        }
        let acks: Vec<_> = (0..WINDOW / 2)
            .filter_map(|_| unacked.pop_front())
            .collect();
        if let Some(last) = acks.last() {
            store.mark_delivered(work, last.seq);
        }
        store
            .remove_many(acks.iter().copied())
            .wait_blocking()
            .expect("commit");
        let mut lock = out.lock();
        for a in acks {
            writeln!(lock, "acked {}", a.seq).expect("stdout");
        }
        lock.flush().expect("stdout");
    }
}

fn random_millis(range: std::ops::Range<u64>) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0) as u64;
    range.start + nanos % (range.end - range.start)
}

#[test]
fn confirmed_messages_survive_sigkill_in_order() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut confirmed = BTreeSet::new();
    let mut acked = BTreeSet::new();
    let mut gone = BTreeSet::new();
    for cycle in 0..CYCLES {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Let it confirm something, then kill it at a random moment.
        let started = Instant::now();
        let mut lines = Vec::new();
        while !lines.iter().any(|l: &String| l.starts_with("acked ")) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "child made no progress"
            );
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
                lines.push(line);
            }
        }
        std::thread::sleep(Duration::from_millis(random_millis(20..1500)));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap child");
        reader.join().expect("reader");
        lines.extend(rx.try_iter());
        let before = (confirmed.len(), acked.len());
        for line in &lines {
            if let Some(seq) = line.strip_prefix("confirmed ") {
                confirmed.insert(seq.parse::<u64>().expect("seq"));
            } else if let Some(seq) = line.strip_prefix("acked ") {
                acked.insert(seq.parse::<u64>().expect("seq"));
            } else if let Some(seq) = line.strip_prefix("gone ") {
                gone.insert(seq.parse::<u64>().expect("seq"));
            }
        }
        assert!(confirmed.len() > before.0 && acked.len() > before.1);

        let (store, recovery) = open(dir.path());
        assert!(
            !recovery.clean_shutdown,
            "cycle {cycle}: killed, not closed"
        );
        let (work, audit, fleeting) = queue_ids(&store, &recovery);
        let work_seqs = check_queue(&store, work);
        let audit_seqs = check_queue(&store, audit);
        let fleeting_seqs = check_queue(&store, fleeting);
        let counts: Vec<_> = recovery.queues.iter().map(|q| (q.id, q.messages)).collect();
        assert!(
            counts.contains(&(work, work_seqs.len() as u64))
                && counts.contains(&(audit, audit_seqs.len() as u64))
                && counts.contains(&(fleeting, fleeting_seqs.len() as u64)),
            "cycle {cycle}: stored counts {counts:?} disagree with the indexes"
        );
        assert!(!gone.is_empty(), "cycle {cycle}: nothing acked at once");
        let back: Vec<_> = fleeting_seqs.intersection(&gone).collect();
        assert!(back.is_empty(), "cycle {cycle}: acked {back:?} came back");
        for seq in &confirmed {
            assert!(
                audit_seqs.contains(seq),
                "cycle {cycle}: confirmed {seq} lost"
            );
        }
        for seq in &acked {
            assert!(
                !work_seqs.contains(seq),
                "cycle {cycle}: acked {seq} came back"
            );
        }
        // Acks take the oldest messages, so the work queue is the audit queue minus a
        // prefix: every confirmed ack, plus at most one ack batch whose commit the kill cut
        // short (applied or not: both are allowed before its confirm).
        assert!(work_seqs.is_subset(&audit_seqs), "cycle {cycle}");
        let cut = audit_seqs.difference(&work_seqs).max().copied();
        if let Some(cut) = cut {
            assert!(
                work_seqs.iter().all(|s| *s > cut),
                "cycle {cycle}: a hole in the work queue at {cut}"
            );
            let last_ack = acked.iter().next_back().copied().unwrap_or(0);
            let unconfirmed_acks = if cut > last_ack {
                audit_seqs.range(last_ack + 1..=cut).count() as u64
            } else {
                0
            };
            assert!(
                unconfirmed_acks <= WINDOW / 2,
                "cycle {cycle}: {unconfirmed_acks} messages gone without a confirmed ack"
            );
        }
        println!(
            "cycle {cycle}: {} confirmed, {} acked in total; work queue holds {}",
            confirmed.len(),
            acked.len(),
            work_seqs.len()
        );
    }
}

/// Reads a queue back: seqs strictly increasing, every body intact. Returns the seqs.
fn check_queue(store: &Store, queue: QueueId) -> BTreeSet<u64> {
    let mut seqs = BTreeSet::new();
    let mut last = None;
    for entry in store.queue_index(queue) {
        let entry = entry.expect("index entry");
        assert!(last < Some(entry.seq), "out of order at {}", entry.seq);
        last = Some(entry.seq);
        let stored = StoredRef {
            queue,
            seq: entry.seq,
            message: entry.message,
        };
        let record = store
            .read_message(stored)
            .expect("read")
            .expect("record of an indexed message");
        assert_eq!(record.header, header(entry.seq));
        assert_eq!(record.body, body(entry.seq, 700));
        seqs.insert(entry.seq);
    }
    seqs
}
