//! Data-parallel training across processes: the step that sums gradients over the ranks
//! ([`DataParallel`]), MPI's [`Collective`] (`mpi_group`, with the `mpi` feature) and the
//! replicas' agreement ([`replicas`]). The [`Collective`] trait itself sits low in the crate
//! ([`crate::collective`]), so that synchronised batch norm can take a group.
//!
//! [`SingleProcess`] is the group of one process (every operation is the identity). With
//! the `mpi` cargo feature, [`init`] joins the MPI job the process was started in (`mpirun
//! -n N`) through rsmpi; without mpirun, or with one rank, a run is exactly a single-process
//! run.
//!
//! How a run uses them ([`crate::run::fit_as_rank`], docs/distributed.md):
//! - rank 0's weights, buffers and optimizer state are broadcast before the first step;
//! - each rank trains on its share of every global batch, and gradients are summed over the
//!   ranks, each weighted by its share of the batch, before the same Adam step everywhere
//!   ([`DataParallel::step`]: [`crate::train::Trainer::step`] with a gradient-reduce hook);
//! - BN running statistics are averaged over the ranks before every evaluation and
//!   checkpoint (the average of per-rank moving averages is the moving average of the
//!   per-rank batch statistics' average, since the update is linear);
//! - after every epoch the ranks compare a hash of every parameter and buffer.

#[cfg(feature = "mpi")]
pub mod mpi_group;
pub mod replicas;
#[cfg(not(target_arch = "wasm32"))]
mod step;

pub use crate::collective::{Collective, SingleProcess, Transport};
pub use replicas::{
    average_tensors, broadcast_tensors, check_replicas, fingerprint, ReplicaMismatch,
};
#[cfg(not(target_arch = "wasm32"))]
pub use step::{DataParallel, GroupStep, GRAD_BUCKET_BYTES};

/// The group this process belongs to: the MPI job it was started in (`mpi` feature and a
/// launcher's environment), else [`SingleProcess`].
pub fn init() -> Box<dyn Collective> {
    #[cfg(feature = "mpi")]
    if mpi_group::launched_by_mpirun() {
        return Box::new(mpi_group::MpiGroup::init());
    }
    Box::new(SingleProcess)
}
