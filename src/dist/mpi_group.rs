//! [`Collective`] over MPI (rsmpi, any MPI library; CI uses Open MPI over its TCP
//! transport).

use mpi::collective::SystemOperation;
use mpi::environment::{Threading, Universe};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use crate::collective::{Collective, Transport};

/// The MPI job of this process: `MPI_COMM_WORLD`, or a duplicate of it (see
/// [`Collective::duplicate`]). The world group finalises MPI when dropped.
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

impl Collective for MpiGroup {
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
    fn transport(&self) -> Transport {
        Transport::Mpi {
            library: self.library.clone(),
        }
    }
    fn duplicate(&self) -> Option<Box<dyn Collective + Send + Sync>> {
        self.multiple.then(|| {
            Box::new(MpiGroup {
                comm: self.comm.duplicate(),
                library: self.library.clone(),
                _universe: None,
                ..*self
            }) as Box<dyn Collective + Send + Sync>
        })
    }
}
