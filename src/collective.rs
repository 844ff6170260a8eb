//! The collectives of a data-parallel run, behind one [`Collective`] trait: low in the
//! crate so that synchronised batch norm (in the tape) can take a group. What uses them to
//! train (the gradient buckets, MPI's implementation, the replica check) is in
//! [`crate::dist`].
//!
//! [`SingleProcess`] is the group of one process: every operation is the identity.

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

/// Time a data-parallel step spent on summing gradients over the ranks, in the unit its
/// holder names.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Communication {
    /// Reading the gradient buckets back and all-reducing them (when they are summed while
    /// backward runs: the all-reduces alone).
    pub summing: f64,
    /// Waiting for the sums after backward (when they are summed while backward runs: what
    /// backward did not hide).
    pub waited: f64,
}

impl std::ops::AddAssign for Communication {
    fn add_assign(&mut self, other: Communication) {
        self.summing += other.summing;
        self.waited += other.waited;
    }
}
