"""The sample queue of token-wise InfoNCE, owned by Python: a ring buffer of unit-norm keys."""
import torch

from ._library import ops

NO_SAMPLE_ID = -1  # an id that matches nothing (distill::no_sample_id)


class SampleQueue(torch.nn.Module):
    """A FIFO ring buffer of `capacity` keys of dimension `dim` (MoCo, DistillVLM), kept in the
    buffer tensors `keys` (capacity, dim) and, with `with_ids`, `ids` (capacity,) int64, so it
    moves with the module (`.to(device)`), is saved in `state_dict()` (the write position and
    fill count travel as extra state) and can be written to distill's own checksummed file
    (`save` / `load`, the format of distill::sample_queue_save, readable from C++).

    Slots [0, len(queue)) hold keys; `enqueue` writes the newest rows, L2-normalised by default.
    token_nce reads the queue as it is; enqueue after the loss (MoCo's order).
    """

    def __init__(self, capacity, dim, *, with_ids=False, dtype=torch.float32, device=None):
        super().__init__()
        self.register_buffer("keys", torch.zeros(capacity, dim, dtype=dtype, device=device))
        self.register_buffer("ids", torch.full((capacity,), NO_SAMPLE_ID, dtype=torch.int64, device=device)
                             if with_ids else None)
        self.write_position = 0
        self._size = 0

    def __len__(self):
        return self._size

    @property
    def capacity(self):
        return self.keys.shape[0]

    def valid_keys(self):
        """The keys written so far, (len(queue), dim)."""
        return self.keys[:self._size]

    def _state(self, new):
        self.write_position, self._size = int(new[0]), int(new[1])

    @torch.no_grad()
    def enqueue(self, keys, ids=None, *, normalize=True, normalize_eps=1e-12):
        """Append the rows of `keys` (B, dim) (any B; the newest `capacity` rows survive), with
        their sample ids (B,) when the queue stores ids."""
        keys = keys.detach()
        if keys.dtype != self.keys.dtype:
            keys = keys.to(self.keys.dtype)
        self._state(ops.sample_queue_enqueue(self.keys, self.ids, self.write_position, self._size, keys, ids,
                                             normalize, normalize_eps))

    @torch.no_grad()
    def init_random(self, seed):
        """Fill every slot with normalised N(0, 1) draws (MoCo's initial queue); the queue is then full."""
        self._state(ops.sample_queue_init_random(self.keys, self.ids, self.write_position, self._size, seed))

    def clear(self):
        """Forget every key (the storage is kept)."""
        self.write_position = self._size = 0

    def save(self, path):
        """Write the queue to `path` atomically (temporary file, fsync, rename) with a checksum."""
        ops.sample_queue_save(self.keys, self.ids, self.write_position, self._size, str(path))

    @torch.no_grad()
    def load(self, path):
        """Read a queue file of the same capacity, dim, dtype and ids layout; on any error
        (missing file, wrong shape, bad checksum) the queue is left unchanged."""
        self._state(ops.sample_queue_load(self.keys, self.ids, self.write_position, self._size, str(path)))

    def get_extra_state(self):
        return {"write_position": self.write_position, "size": self._size}

    def set_extra_state(self, state):
        self.write_position, self._size = int(state["write_position"]), int(state["size"])

    def extra_repr(self):
        return f"capacity={self.capacity}, dim={self.keys.shape[1]}, size={self._size}, ids={self.ids is not None}"
