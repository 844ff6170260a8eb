//! Data-parallel training across processes: the collectives a run needs, behind one
//! [`Collective`] trait.
//!
//! [`SingleProcess`] is the group of one process (every operation is the identity). With
//! the `mpi` cargo feature, [`init`] joins the MPI job the process was started in (`mpirun
//! -n N`) through rsmpi; without mpirun, or with one rank, a run is exactly a single-process
//! run.
//!
//! How a run uses them ([`crate::run::fit_group`], docs/distributed.md):
//! - rank 0's weights, buffers and optimizer state are broadcast before the first step;
//! - each rank trains on its share of every global batch, and gradients are summed over the
//!   ranks, each weighted by its share of the batch, before the same Adam step everywhere;
//! - BN running statistics are averaged over the ranks before every evaluation and
//!   checkpoint (the average of per-rank moving averages is the moving average of the
//!   per-rank batch statistics' average, since the update is linear);
//! - after every epoch the ranks compare a hash of every parameter and buffer.

use std::fmt;

use crate::gpu::{Gpu, Result, Tensor};

/// What carries a group's collectives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// One process: nothing to carry.
    SingleProcess,
    /// MPI; `library` is the library's own version text (`MPI_Get_library_version`).
    Mpi { library: String },
    /// A transport a program brings (a test's, another library's), by its name.
    Other { name: String },
}

/// The processes of one data-parallel run. Every rank must call the same operations in the
/// same order; each returns the same values on every rank.
pub trait Collective {
    /// This process's index, `0..size()`.
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// This process's index among the ranks on its host (it picks the GPU).
    fn local_rank(&self) -> usize;
    /// Element-wise sum over the ranks, in place.
    fn all_reduce_sum(&self, data: &mut [f32]);
    /// Element-wise sum over the ranks, in place.
    fn all_reduce_sum_f64(&self, data: &mut [f64]);
    /// Rank 0's values, everywhere.
    fn broadcast(&self, data: &mut [f32]);
    /// Rank 0's values, everywhere.
    fn broadcast_u64(&self, data: &mut [u64]);
    /// Every rank's value, in rank order.
    fn all_gather_u64(&self, value: u64) -> Vec<u64>;
    /// Every rank's `data` (the same length on each), concatenated in rank order.
    fn all_gather_f32(&self, data: &[f32]) -> Vec<f32>;
    /// Ends every process of the run with `code` (an error on one rank must not leave the
    /// others waiting in a collective).
    fn abort(&self, code: i32) -> !;
    /// What carries the collectives (for the run's header line).
    fn transport(&self) -> Transport;
    /// A second channel to the same ranks that another thread may use while this one is in
    /// use (an MPI communicator duplicate under `MPI_THREAD_MULTIPLE`): gradient buckets
    /// are summed on it while backward goes on. `None` where that is not possible.
    fn duplicate(&self) -> Option<Box<dyn Collective + Send + Sync>> {
        None
    }

    /// Whether this process writes files and prints progress: rank 0.
    fn is_writer(&self) -> bool {
        self.rank() == 0
    }
}

/// The group of one process.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn all_reduce_sum(&self, _: &mut [f32]) {}
    fn all_reduce_sum_f64(&self, _: &mut [f64]) {}
    fn broadcast(&self, _: &mut [f32]) {}
    fn broadcast_u64(&self, _: &mut [u64]) {}
    fn all_gather_u64(&self, value: u64) -> Vec<u64> {
        vec![value]
    }
    fn all_gather_f32(&self, data: &[f32]) -> Vec<f32> {
        data.to_vec()
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn transport(&self) -> Transport {
        Transport::SingleProcess
    }
}

/// The group this process belongs to: the MPI job it was started in (`mpi` feature and a
/// launcher's environment), else [`SingleProcess`].
pub fn init() -> Box<dyn Collective> {
    #[cfg(feature = "mpi")]
    if mpi_group::launched_by_mpirun() {
        return Box::new(mpi_group::MpiGroup::init());
    }
    Box::new(SingleProcess)
}

#[cfg(feature = "mpi")]
pub mod mpi_group {
    //! [`Collective`](super::Collective) over MPI (rsmpi, any MPI library; CI uses Open MPI
    //! over its TCP transport).

    use mpi::collective::SystemOperation;
    use mpi::environment::{Threading, Universe};
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;

    /// The MPI job of this process: `MPI_COMM_WORLD`, or a duplicate of it (see
    /// [`Collective::duplicate`](super::Collective::duplicate)). The world group finalises
    /// MPI when dropped.
    pub struct MpiGroup {
        comm: SimpleCommunicator,
        rank: usize,
        size: usize,
        local_rank: usize,
        library: String,
        /// The library runs calls from several threads at once (`MPI_THREAD_MULTIPLE`).
        multiple: bool,
        // Dropped last: finalises MPI (world group only).
        _universe: Option<Universe>,
    }

    // SAFETY: a group crosses threads only as a duplicate, and duplicates are only made when
    // MPI runs under MPI_THREAD_MULTIPLE, where a communicator may be used from any thread;
    // each is used by one thread at a time.
    unsafe impl Send for MpiGroup {}
    unsafe impl Sync for MpiGroup {}

    /// Whether a launcher started this process (Open MPI, MPICH/Hydra or Slurm's PMI).
    pub fn launched_by_mpirun() -> bool {
        ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"]
            .iter()
            .any(|v| std::env::var_os(v).is_some())
    }

    impl MpiGroup {
        /// Initialises MPI (asking for `MPI_THREAD_MULTIPLE`). Panics when the launcher's
        /// MPI cannot be initialised (nothing can run then).
        pub fn init() -> MpiGroup {
            let (universe, threading) =
                mpi::initialize_with_threading(Threading::Multiple).expect("MPI_Init failed");
            let world = universe.world();
            let shared = world.split_shared(world.rank());
            let library = mpi::environment::library_version()
                .unwrap_or_default()
                .split([',', '\n'])
                .next()
                .unwrap_or("MPI")
                .trim()
                .to_string();
            MpiGroup {
                rank: world.rank() as usize,
                size: world.size() as usize,
                local_rank: shared.rank() as usize,
                comm: world,
                library,
                multiple: threading == Threading::Multiple,
                _universe: Some(universe),
            }
        }
    }

    impl super::Collective for MpiGroup {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.size
        }
        fn local_rank(&self) -> usize {
            self.local_rank
        }
        fn all_reduce_sum(&self, data: &mut [f32]) {
            let send = data.to_vec();
            self.comm
                .all_reduce_into(&send[..], data, SystemOperation::sum());
        }
        fn all_reduce_sum_f64(&self, data: &mut [f64]) {
            let send = data.to_vec();
            self.comm
                .all_reduce_into(&send[..], data, SystemOperation::sum());
        }
        fn broadcast(&self, data: &mut [f32]) {
            self.comm.process_at_rank(0).broadcast_into(data);
        }
        fn broadcast_u64(&self, data: &mut [u64]) {
            self.comm.process_at_rank(0).broadcast_into(data);
        }
        fn all_gather_u64(&self, value: u64) -> Vec<u64> {
            let mut all = vec![0u64; self.size];
            self.comm.all_gather_into(&value, &mut all[..]);
            all
        }
        fn all_gather_f32(&self, data: &[f32]) -> Vec<f32> {
            let mut all = vec![0f32; data.len() * self.size];
            self.comm.all_gather_into(data, &mut all[..]);
            all
        }
        fn abort(&self, code: i32) -> ! {
            self.comm.abort(code)
        }
        fn transport(&self) -> super::Transport {
            super::Transport::Mpi {
                library: self.library.clone(),
            }
        }
        fn duplicate(&self) -> Option<Box<dyn super::Collective + Send + Sync>> {
            self.multiple.then(|| {
                Box::new(MpiGroup {
                    comm: self.comm.duplicate(),
                    library: self.library.clone(),
                    _universe: None,
                    ..*self
                }) as Box<dyn super::Collective + Send + Sync>
            })
        }
    }
}

/// FNV-1a over the bits of `values`: a replica fingerprint (equal values give equal
/// hashes on every rank and host).
pub fn fingerprint(values: &[f32]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in values {
        for b in v.to_bits().to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Replicas that are not identical: the first tensor whose values differ between ranks.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaMismatch {
    pub tensor: String,
    /// That tensor's fingerprint on each rank.
    pub hashes: Vec<u64>,
}

impl fmt::Display for ReplicaMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hashes: Vec<String> = self.hashes.iter().map(|h| format!("{h:016x}")).collect();
        write!(
            f,
            "replicas differ: tensor {:?} has different values across ranks (hash per rank: {})",
            self.tensor,
            hashes.join(", ")
        )
    }
}

/// Compares every named tensor across the ranks; returns the combined fingerprint, the
/// same on every rank, or the first tensor that differs.
pub fn check_replicas(
    gpu: &Gpu,
    group: &dyn Collective,
    tensors: &[(String, Tensor)],
) -> Result<std::result::Result<u64, ReplicaMismatch>> {
    let mut hashes = Vec::with_capacity(tensors.len());
    for (_, t) in tensors {
        hashes.push(fingerprint(&gpu.download(t)?));
    }
    let combined = hashes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
        (h ^ x).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let all = group.all_gather_u64(combined);
    if all.iter().all(|&h| h == combined) {
        return Ok(Ok(combined));
    }
    // Find the first tensor that differs (every rank takes part in each comparison).
    for ((name, _), &h) in tensors.iter().zip(&hashes) {
        let per_rank = group.all_gather_u64(h);
        if per_rank.iter().any(|&x| x != per_rank[0]) {
            return Ok(Err(ReplicaMismatch {
                tensor: name.clone(),
                hashes: per_rank,
            }));
        }
    }
    Ok(Err(ReplicaMismatch {
        tensor: "(the combined hash)".into(),
        hashes: all,
    }))
}

/// Rank 0's value of each tensor, everywhere.
pub fn broadcast_tensors<'a>(
    gpu: &Gpu,
    group: &dyn Collective,
    tensors: impl IntoIterator<Item = &'a Tensor>,
) -> Result<()> {
    if group.size() == 1 {
        return Ok(());
    }
    for t in tensors {
        let mut values = gpu.download(t)?;
        group.broadcast(&mut values);
        if group.rank() != 0 {
            gpu.write(t, &values)?;
        }
    }
    Ok(())
}

/// The mean over the ranks of each tensor, everywhere.
pub fn average_tensors<'a>(
    gpu: &Gpu,
    group: &dyn Collective,
    tensors: impl IntoIterator<Item = &'a Tensor>,
) -> Result<()> {
    if group.size() == 1 {
        return Ok(());
    }
    let scale = 1.0 / group.size() as f32;
    for t in tensors {
        let mut values = gpu.download(t)?;
        group.all_reduce_sum(&mut values);
        for v in &mut values {
            *v *= scale;
        }
        gpu.write(t, &values)?;
    }
    Ok(())
}
