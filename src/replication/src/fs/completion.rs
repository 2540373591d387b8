//! The completion threads: where replies wait for the secondary's acknowledgement.
//!
//! A FUSE request that changed something is applied locally and submitted to the sink on the
//! FUSE thread (that fixes the order); the wait for the acknowledgement and the reply to the
//! kernel happen here, so the FUSE threads go back to reading requests at once. Concurrent
//! writers thus overlap their round trips instead of queueing one round trip each. Threads
//! blocked in `OpSink::wait` cost nothing but a stack, so the pool is sized for the number of
//! application threads expected to wait at once, not for the cores.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub type Job = Box<dyn FnOnce() + Send + 'static>;

pub struct Completions {
    tx: Mutex<Option<Sender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Completions {
    pub fn new(n: usize) -> std::io::Result<Completions> {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::new();
        for i in 0..n.max(1) {
            let rx: Arc<Mutex<Receiver<Job>>> = rx.clone();
            threads.push(std::thread::Builder::new().name(format!("tandem-ack-{i}")).spawn(move || loop {
                // Hold the lock only to take one job, never while running it.
                let job = match rx.lock() {
                    Ok(r) => r.recv(),
                    Err(_) => return,
                };
                match job {
                    Ok(job) => job(),
                    Err(_) => return,
                }
            })?);
        }
        Ok(Completions { tx: Mutex::new(Some(tx)), threads: Mutex::new(threads) })
    }

    /// Runs `job` on a completion thread; after shutdown (or if the pool is gone) runs it inline so
    /// that no reply is ever lost.
    pub fn run(&self, job: Job) {
        let tx = self.tx.lock().ok().and_then(|t| t.clone());
        match tx {
            Some(tx) => {
                if let Err(e) = tx.send(job) {
                    (e.0)()
                }
            }
            None => job(),
        }
    }

    /// Lets the queued jobs finish and joins the threads.
    pub fn shutdown(&self) {
        if let Ok(mut t) = self.tx.lock() {
            t.take();
        }
        let threads = self.threads.lock().map(|mut t| std::mem::take(&mut *t)).unwrap_or_default();
        for t in threads {
            let _ = t.join();
        }
    }
}
