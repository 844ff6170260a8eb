//! Replicas that stay identical: rank 0's state everywhere, the ranks' mean of the BN
//! statistics, and a check that every parameter and buffer agrees.

use std::fmt;

use crate::collective::Collective;
use crate::gpu::{Gpu, Result, Tensor};

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
pub async fn check_replicas(
    gpu: &Gpu,
    group: &dyn Collective,
    tensors: &[(String, Tensor)],
) -> Result<std::result::Result<u64, ReplicaMismatch>> {
    let mut hashes = Vec::with_capacity(tensors.len());
    for (_, t) in tensors {
        hashes.push(fingerprint(&gpu.read(t).await?));
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
pub async fn broadcast_tensors<'a>(
    gpu: &Gpu,
    group: &dyn Collective,
    tensors: impl IntoIterator<Item = &'a Tensor>,
) -> Result<()> {
    // Rank 0 keeps its own values.
    let keep = group.rank() == 0;
    exchange(gpu, group, tensors, |values| {
        group.broadcast(values);
        !keep
    })
    .await
}

/// The mean over the ranks of each tensor, everywhere.
pub async fn average_tensors<'a>(
    gpu: &Gpu,
    group: &dyn Collective,
    tensors: impl IntoIterator<Item = &'a Tensor>,
) -> Result<()> {
    let scale = 1.0 / group.size() as f32;
    exchange(gpu, group, tensors, |values| {
        group.all_reduce_sum(values);
        for v in values {
            *v *= scale;
        }
        true
    })
    .await
}

/// Reads each tensor back in turn, lets `combine` replace its values with the group's, and
/// writes them back where `combine` returns true. Nothing happens in a group of one.
async fn exchange<'a>(
    gpu: &Gpu,
    group: &dyn Collective,
    tensors: impl IntoIterator<Item = &'a Tensor>,
    mut combine: impl FnMut(&mut [f32]) -> bool,
) -> Result<()> {
    if group.size() == 1 {
        return Ok(());
    }
    for t in tensors {
        let mut values = gpu.read(t).await?;
        if combine(&mut values) {
            gpu.write(t, &values)?;
        }
    }
    Ok(())
}
