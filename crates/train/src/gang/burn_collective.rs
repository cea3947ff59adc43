//! [`Collective`] on burn's `burn-collective` (burn 0.21, its local mode: one thread per
//! device in one process). burn removed the crate after 0.21 in favour of a distributed
//! context; this file is all that knows it.

use super::Collective;
use burn::collective::{
    all_reduce, finish_collective, register, reset_collective, CollectiveConfig, PeerId, ReduceOperation,
};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};

/// One rank's peer in burn's local collective. It registers on its first call, which returns
/// once every rank has registered.
pub struct BurnCollective<I: Backend> {
    peer: PeerId,
    world: usize,
    device: I::Device,
    registered: bool,
}

impl<I: Backend> BurnCollective<I> {
    /// Rank `rank` of `world`, on `device`.
    pub fn new(rank: usize, world: usize, device: I::Device) -> Self {
        Self { peer: PeerId::from(rank), world, device, registered: false }
    }
}

impl<I: Backend> Collective<I> for BurnCollective<I> {
    fn sum(&mut self, tensor: Tensor<I, 1>) -> Result<Tensor<I, 1>, String> {
        if !self.registered {
            let config = CollectiveConfig::default().with_num_devices(self.world);
            register::<I>(self.peer, self.device.clone(), config).map_err(|e| format!("registering: {e:?}"))?;
            self.registered = true;
        }
        let summed = all_reduce::<I>(self.peer, tensor.into_primitive().tensor(), ReduceOperation::Sum)
            .map_err(|e| format!("all-reduce: {e:?}"))?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(summed)))
    }

    fn finish(&mut self) {
        if self.registered {
            let _ = finish_collective::<I>(self.peer);
        }
    }
}

/// Abandons the calls in progress of backend `I`'s collective in this process.
pub fn abandon<I: Backend>() {
    reset_collective::<I>();
}
