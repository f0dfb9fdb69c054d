//! Argon2id password hashing on a small, fixed pool of threads, so that
//! logins never stall the async executor, and a login storm neither takes
//! every CPU nor grows the memory.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, ParamsString, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::{OnceCell, Semaphore, oneshot};

use crate::config::AuthSettings;
use crate::domain::user::PasswordHash;
use crate::services::ports::accounts::{HashingError, PasswordHasher};

#[derive(Clone)]
pub struct Argon2Hasher {
    pool: HashingPool,
    /// Verified against when the user does not exist, to take the same time.
    /// Made on first use so that start-up does not pay for a hash.
    dummy_hash: Arc<OnceCell<String>>,
}

impl Argon2Hasher {
    pub fn new(settings: &AuthSettings) -> Result<Self, HashingError> {
        let cost = settings.argon2;
        let params = Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
            .map_err(|e| HashingError::Failed(format!("invalid auth.argon2 settings: {e}")))?;
        // By default half the CPUs hash, so logins at full load leave the
        // other half to every other request.
        let concurrency = match settings.hashing_concurrency {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get().div_ceil(2)),
            n => n,
        };
        // Queued or running at once; beyond that, callers are told at once.
        let queue = match settings.hashing_queue {
            0 => concurrency.saturating_mul(8),
            n => n,
        };
        Ok(Self {
            pool: HashingPool::start(&params, concurrency, queue)?,
            dummy_hash: Arc::new(OnceCell::new()),
        })
    }

    async fn run_blocking<R: Send + 'static>(
        &self,
        work: impl FnOnce(&mut ThreadHasher) -> R + Send + 'static,
    ) -> Result<R, HashingError> {
        self.pool.run(work).await
    }
}

type HashingJob = Box<dyn FnOnce(&mut ThreadHasher) + Send>;

/// Long-lived threads that only hash, taking jobs from one queue.
///
/// Why not `spawn_blocking`: every new thread that hashes gets its own malloc
/// arena, which keeps the hash's memory (7 MiB by default) after the thread is
/// gone — measured, resident memory grew past 140 MiB under a login storm.
/// A fixed pool reuses the same memory for hashes that follow each other (see
/// [`ThreadHasher`]). Its threads also run at a lower priority, so requests
/// that need little CPU stay fast meanwhile.
///
/// The queue is bounded: a job takes a permit before it is queued and gives it
/// back when done, and with none left [`HashingError::Busy`] is answered at
/// once. A flood of logins thus costs a fixed amount of waiting, not a queue
/// that grows until a real user's login takes seconds.
#[derive(Clone)]
struct HashingPool {
    jobs: mpsc::Sender<HashingJob>,
    permits: Arc<Semaphore>,
}

impl HashingPool {
    fn start(params: &Params, threads: usize, queue_limit: usize) -> Result<Self, HashingError> {
        let (jobs, queue) = mpsc::channel::<HashingJob>();
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..threads {
            let (queue, mut hasher) = (queue.clone(), ThreadHasher::new(params.clone()));
            std::thread::Builder::new()
                .name(format!("allot-hashing-{n}"))
                .spawn(move || {
                    lower_this_threads_priority();
                    loop {
                        // The lock is held only while waiting for the next job
                        // (and giving the memory back when none is queued).
                        let next = queue.lock().map_err(drop).and_then(|q| {
                            q.try_recv().or_else(|_| {
                                hasher.release_memory();
                                q.recv().map_err(drop)
                            })
                        });
                        match next {
                            Ok(job) => job(&mut hasher),
                            Err(()) => return, // every hasher is gone
                        }
                    }
                })
                .map_err(|e| HashingError::Failed(format!("cannot start a hashing thread: {e}")))?;
        }
        Ok(Self {
            jobs,
            permits: Arc::new(Semaphore::new(queue_limit.max(1))),
        })
    }

    async fn run<R: Send + 'static>(
        &self,
        work: impl FnOnce(&mut ThreadHasher) -> R + Send + 'static,
    ) -> Result<R, HashingError> {
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| HashingError::Busy)?;
        let (done, result) = oneshot::channel();
        let job: HashingJob = Box::new(move |hasher| {
            let result = work(hasher);
            // Back before the caller hears, so its next job finds the permit.
            drop(permit);
            let _ = done.send(result);
        });
        let stopped = || HashingError::Failed("the hashing threads have stopped".to_owned());
        self.jobs.send(job).map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())
    }
}

/// Nice 10: hashing yields the CPU to request handling when both want it.
#[cfg(target_os = "linux")]
fn lower_this_threads_priority() {
    // SAFETY: plain syscalls on the calling thread, no pointers involved. On
    // Linux the nice value is per thread, addressed by its thread id.
    let result = unsafe {
        let thread = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, thread, 10)
    };
    if result != 0 {
        tracing::debug!("cannot lower the hashing thread's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_this_threads_priority() {}

/// One hashing thread's Argon2, with the memory it hashes in (7 MiB at the
/// default cost), kept from one hash to the next while hashes wait, and given
/// back to the OS when none does.
///
/// Why: left to the crate, every hash maps fresh memory and unmaps it after
/// (glibc's mmap threshold is pinned, see `main.rs`). That cost a page fault
/// per 4 KiB, 1,500 a login, and a fifth of allot's CPU during a login flood
/// was the kernel's (`/proc/<pid>/stat`). Given back when idle, it adds
/// nothing to the resident memory between logins. The memory holds blocks
/// derived from the password, from which a guess can be checked without
/// Argon2's cost, so it is zeroed after every hash.
struct ThreadHasher {
    /// The configured cost, for new hashes.
    params: Params,
    memory: Vec<Block>,
}

impl ThreadHasher {
    fn new(params: Params) -> Self {
        Self {
            params,
            memory: Vec::new(),
        }
    }

    /// Unmaps the memory (glibc's pinned mmap threshold, see `main.rs`).
    fn release_memory(&mut self) {
        self.memory = Vec::new();
    }

    fn hash(&mut self, password: &str) -> Result<String, HashingError> {
        let salt = SaltString::generate(&mut OsRng);
        let params = self.params.clone();
        self.phc(
            Algorithm::Argon2id,
            Version::V0x13,
            params,
            password,
            salt.as_salt(),
        )
        .map(|hash| hash.to_string())
        .map_err(|e| HashingError::Failed(e.to_string()))
    }

    /// Whether `password` hashes to `phc`, at the cost `phc` records.
    fn verify(&mut self, password: &str, phc: &str) -> bool {
        let Ok(stored) = argon2::PasswordHash::new(phc) else {
            return false;
        };
        let (Some(salt), Some(expected)) = (stored.salt, stored.hash) else {
            return false;
        };
        let cost = Algorithm::try_from(stored.algorithm).and_then(|algorithm| {
            let version = stored.version.map(Version::try_from).transpose()?;
            Ok((
                algorithm,
                version.unwrap_or_default(),
                Params::try_from(&stored)?,
            ))
        });
        // `Output`'s equality takes the same time wherever the bytes differ.
        cost.is_ok_and(|(algorithm, version, params)| {
            self.phc(algorithm, version, params, password, salt)
                .is_ok_and(|computed| computed.hash == Some(expected))
        })
    }

    /// What `Argon2::hash_password` makes, made in this thread's memory.
    fn phc<'a>(
        &mut self,
        algorithm: Algorithm,
        version: Version,
        params: Params,
        password: &str,
        salt: Salt<'a>,
    ) -> argon2::password_hash::Result<argon2::PasswordHash<'a>> {
        let argon2 = Argon2::new(algorithm, version, params.clone());
        let mut salt_bytes = [0; Salt::MAX_LENGTH];
        let salt_bytes = salt.decode_b64(&mut salt_bytes)?;
        if self.memory.len() < params.block_count() {
            self.memory.resize(params.block_count(), Block::default());
        }
        let output_len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
        let output = Output::init_with(output_len, |out| {
            let hashed = argon2.hash_password_into_with_memory(
                password.as_bytes(),
                salt_bytes,
                out,
                &mut self.memory[..],
            );
            self.memory.fill(Block::default());
            Ok(hashed?)
        })?;
        Ok(argon2::PasswordHash {
            algorithm: algorithm.ident(),
            version: Some(version.into()),
            params: ParamsString::try_from(&params)?,
            salt: Some(salt),
            hash: Some(output),
        })
    }
}

impl PasswordHasher for Argon2Hasher {
    async fn hash(&self, password: &str) -> Result<PasswordHash, HashingError> {
        let password = password.to_owned();
        self.run_blocking(move |hasher| hasher.hash(&password))
            .await?
            .map(PasswordHash::new)
    }

    async fn verify(
        &self,
        password: &str,
        hash: Option<&PasswordHash>,
    ) -> Result<bool, HashingError> {
        let password = password.to_owned();
        let known = hash.is_some();
        let phc = match hash {
            Some(hash) => hash.as_str().to_owned(),
            None => self
                .dummy_hash
                .get_or_try_init(|| async {
                    self.run_blocking(|hasher| hasher.hash("allot dummy password"))
                        .await?
                })
                .await?
                .clone(),
        };
        let matches = self
            .run_blocking(move |hasher| hasher.verify(&password, &phc))
            .await?;
        Ok(known && matches)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Environment, Settings};

    fn settings() -> AuthSettings {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        Settings::load_from(&dir, Environment::Testing)
            .unwrap()
            .auth
    }

    fn hasher() -> Argon2Hasher {
        Argon2Hasher::new(&settings()).unwrap()
    }

    /// One hashing thread, with room for `queue` jobs.
    fn one_thread(queue: usize) -> Argon2Hasher {
        let mut settings = settings();
        settings.hashing_concurrency = 1;
        settings.hashing_queue = queue;
        Argon2Hasher::new(&settings).unwrap()
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let hasher = hasher();
        let hash = hasher.hash("correct horse").await.unwrap();
        assert!(hash.as_str().starts_with("$argon2id$"));
        assert!(hasher.verify("correct horse", Some(&hash)).await.unwrap());
        assert!(!hasher.verify("wrong horse", Some(&hash)).await.unwrap());
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashing_runs_on_the_pool_at_a_lower_priority() {
        let hasher = hasher();
        let (name, nice) = hasher
            .run_blocking(|_| {
                let name = std::thread::current().name().map(str::to_owned);
                // SAFETY: reads the calling thread's nice value; no pointers.
                let nice = unsafe {
                    let thread = libc::syscall(libc::SYS_gettid) as libc::id_t;
                    libc::getpriority(libc::PRIO_PROCESS, thread)
                };
                (name, nice)
            })
            .await
            .unwrap();
        assert!(name.is_some_and(|n| n.starts_with("allot-hashing-")));
        assert_eq!(nice, 10);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_answers_busy_at_once() {
        let hasher = one_thread(1);
        let (started, release) = (
            std::sync::mpsc::channel::<()>(),
            std::sync::mpsc::channel::<()>(),
        );
        let (started_tx, started_rx) = started;
        let (release_tx, release_rx) = release;
        let blocking = hasher.clone();
        let blocked = tokio::spawn(async move {
            blocking
                .run_blocking(move |_| {
                    let _ = started_tx.send(());
                    let _ = release_rx.recv();
                })
                .await
        });
        started_rx.recv().unwrap();
        assert!(matches!(
            hasher.hash("correct horse").await,
            Err(HashingError::Busy)
        ));
        release_tx.send(()).unwrap();
        blocked.await.unwrap().unwrap();
        assert!(
            hasher.hash("correct horse").await.is_ok(),
            "a permit is back"
        );
    }

    #[test]
    fn hashes_agree_with_the_argon2_crates_own() {
        use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
        let ours = Params::new(256, 2, 1, None).unwrap();
        let mut hasher = ThreadHasher::new(ours.clone());
        let made_here = hasher.hash("correct horse").unwrap();
        let crate_default = Argon2::new(Algorithm::Argon2id, Version::V0x13, ours);
        let parsed = argon2::PasswordHash::new(&made_here).unwrap();
        assert!(
            crate_default
                .verify_password(b"correct horse", &parsed)
                .is_ok()
        );

        // A hash stored at another cost, larger memory included.
        let other = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(512, 1, 2, Some(24)).unwrap(),
        );
        let salt = SaltString::generate(&mut OsRng);
        let stored = other
            .hash_password(b"battery staple", &salt)
            .unwrap()
            .to_string();
        assert!(hasher.verify("battery staple", &stored));
        assert!(!hasher.verify("battery stable", &stored));
        assert!(!hasher.verify("battery staple", "$argon2id$v=19$m=512,t=1,p=2$bm90"));
    }

    #[test]
    fn a_threads_memory_is_zeroed_after_every_hash() {
        let params = Params::new(256, 1, 1, None).unwrap();
        let mut hasher = ThreadHasher::new(params.clone());
        let hash = hasher.hash("correct horse").unwrap();
        assert!(hasher.verify("correct horse", &hash));
        assert_eq!(hasher.memory.len(), params.block_count());
        let zero = Block::default();
        assert!(
            hasher
                .memory
                .iter()
                .all(|block| block.as_ref() == zero.as_ref())
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_is_kept_while_hashes_wait_and_given_back_when_none_does() {
        use std::task::Poll;
        let hasher = one_thread(4);
        let memory = || hasher.run_blocking(|h| h.memory.len());

        // A hash with another job waiting behind it: that job finds the
        // memory. Each job is queued by its future's first poll, so both
        // are queued, in this order, before the hash is let go.
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let mut blocked = Box::pin(hasher.run_blocking(move |h| {
            let _ = release_rx.recv();
            h.hash("correct horse")
        }));
        let mut waiting = Box::pin(memory());
        std::future::poll_fn(|cx| {
            assert!(blocked.as_mut().poll(cx).is_pending());
            assert!(waiting.as_mut().poll(cx).is_pending());
            Poll::Ready(())
        })
        .await;
        release_tx.send(()).unwrap();
        blocked.await.unwrap().unwrap();
        assert!(waiting.await.unwrap() > 0, "kept for a waiting job");

        // Nothing waiting after it: the memory goes back. (A job sent the
        // moment a hash answers may still find it, so ask until the thread
        // has looked at an empty queue.)
        hasher.hash("correct horse").await.unwrap();
        let mut asked = 0;
        while memory().await.unwrap() > 0 {
            asked += 1;
            assert!(asked < 100, "the memory was never given back");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn an_unknown_user_never_verifies() {
        let hasher = hasher();
        assert!(!hasher.verify("allot dummy password", None).await.unwrap());
    }
}
