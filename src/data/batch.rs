//! Held-out splits, batch order (length-bucketed or shuffled), and collation into tensors.
//!
//! Randomness comes from a small SplitMix64 generator defined here rather than `rand`'s
//! `StdRng`, whose algorithm may change between `rand` versions: a seed must give the same
//! held-out split and batch order on every build, so runs stay comparable.

use candle_core::{Device, Tensor};

use crate::data::{Encoded, Label, op_error};
use crate::error::Result;

/// Batches per length-sorted chunk in [`batch_order`] with bucketing.
const BUCKET_BATCHES: usize = 50;

/// SplitMix64 (Steele, Lea & Flood 2014): tiny, fast, and fixed forever.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..bound` (`bound > 0`), by multiply-shift.
    fn below(&mut self, bound: usize) -> usize {
        ((u128::from(self.next()) * bound as u128) >> 64) as usize
    }

    /// Fisher–Yates shuffle.
    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// Splits `0..n` into `(train, held_out)` index lists, each sorted ascending, with
/// `round(n · fraction)` held-out indices drawn by `seed`.
///
/// The same `(n, fraction, seed)` always gives the same split. When `fraction > 0` and
/// `n ≥ 2`, each part gets at least one index. `fraction ≤ 0` (or NaN) holds nothing out;
/// `fraction ≥ 1` keeps one index for training. With `n ≤ 1` everything goes to `train`
/// (callers that need a held-out set should check `held_out.is_empty()`).
pub fn held_out_split(n: usize, fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let k = if n < 2 || fraction.is_nan() || fraction <= 0.0 {
        0
    } else {
        ((n as f64 * fraction.min(1.0)).round() as usize).clamp(1, n - 1)
    };
    let mut idx: Vec<usize> = (0..n).collect();
    SplitMix64(seed ^ 0x6865_6c64_5f6f_7574).shuffle(&mut idx); // "held_out"
    let mut held = idx.split_off(n - k);
    idx.sort_unstable();
    held.sort_unstable();
    (idx, held)
}

/// The training batches of one epoch, as lists of example indices into `lengths` (each
/// example's token count). Every index appears exactly once.
///
/// The order depends on `seed` and `epoch` together (so every epoch differs, and seed `s`
/// epoch 1 is not seed `s + 1` epoch 0). Without `bucket`: a plain seeded shuffle cut into
/// batches of `batch_size` (the last may be smaller). With `bucket`: shuffle, group into chunks
/// of 50 × `batch_size`, sort each chunk by length, cut into batches, and shuffle the batches,
/// so a batch holds texts of similar length (less padding) while batches still come in random
/// order. `batch_size` 0 is taken as 1.
pub fn batch_order(
    lengths: &[usize],
    batch_size: usize,
    seed: u64,
    epoch: usize,
    bucket: bool,
) -> Vec<Vec<usize>> {
    let bs = batch_size.max(1);
    let mut rng = SplitMix64(seed);
    let epoch_key = SplitMix64(epoch as u64 ^ 0x6570_6f63_6800_0000).next(); // "epoch"
    rng.0 ^= epoch_key;
    let mut idx: Vec<usize> = (0..lengths.len()).collect();
    rng.shuffle(&mut idx);
    if !bucket {
        return idx.chunks(bs).map(<[usize]>::to_vec).collect();
    }
    let mut batches = Vec::with_capacity(lengths.len().div_ceil(bs));
    for chunk in idx.chunks(bs * BUCKET_BATCHES) {
        let mut chunk = chunk.to_vec();
        chunk.sort_by_key(|&i| lengths[i]); // stable: equal lengths keep the shuffled order
        batches.extend(chunk.chunks(bs).map(<[usize]>::to_vec));
    }
    rng.shuffle(&mut batches);
    batches
}

/// Evaluation batches: indices sorted by length, longest first (so an out-of-memory shows on
/// the first batch), cut into batches of `batch_size` (0 is taken as 1).
///
/// The result lists **indices**: predictions come back in this order, and the caller puts
/// them back in file order with them (`preds[idx] = out`).
pub fn sequential_batches(lengths: &[usize], batch_size: usize) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..lengths.len()).collect();
    idx.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    idx.chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect()
}

/// One padded batch of token ids, what every model family takes.
#[derive(Debug, Clone)]
pub struct ModelInput {
    /// Token ids, `(b_sz, seq_len)`, u32.
    pub input_ids: Tensor,
    /// 1 for real tokens, 0 for padding, `(b_sz, seq_len)`, u32.
    pub attention_mask: Tensor,
    /// Segment ids (0 for the first text, 1 for the second), `(b_sz, seq_len)`, u32; `None`
    /// reads as all zeros (and is what decoders, which have no segments, get).
    pub token_type_ids: Option<Tensor>,
    /// Positions, `(b_sz, seq_len)`, u32; `None`: the family's own (0, 1, … from the first
    /// token; RoBERTa's from the padding id).
    pub position_ids: Option<Tensor>,
}

impl ModelInput {
    /// Ids and mask, no segments, the family's own positions.
    pub fn new(input_ids: Tensor, attention_mask: Tensor) -> Self {
        Self {
            input_ids,
            attention_mask,
            token_type_ids: None,
            position_ids: None,
        }
    }

    /// With segment ids.
    pub fn with_token_types(self, token_type_ids: Tensor) -> Self {
        Self {
            token_type_ids: Some(token_type_ids),
            ..self
        }
    }
}

/// Pads `items` to the longest among them and builds the model input: `input_ids` and
/// `token_type_ids` padded with `pad_id`/0, `attention_mask` 1 on tokens and 0 on padding, all
/// `(b, seq)` u32 on `device`.
///
/// # Errors
/// An empty batch, an item with no tokens, or ids and type ids of different lengths.
pub fn collate(items: &[&Encoded], pad_id: u32, device: &Device) -> Result<ModelInput> {
    if items.is_empty() {
        return Err(op_error(
            "collate",
            "empty batch; expected at least one example",
        ));
    }
    for (i, it) in items.iter().enumerate() {
        if it.ids.is_empty() || it.ids.len() != it.type_ids.len() {
            return Err(op_error(
                "collate",
                format!(
                    "item {i} has {} token ids and {} type ids; expected the same non-zero count",
                    it.ids.len(),
                    it.type_ids.len()
                ),
            ));
        }
    }
    let b = items.len();
    let seq = items.iter().map(|it| it.len()).max().unwrap_or(0);
    let mut ids = vec![pad_id; b * seq];
    let mut types = vec![0u32; b * seq];
    let mut mask = vec![0u32; b * seq];
    for (row, it) in items.iter().enumerate() {
        let at = row * seq;
        ids[at..at + it.len()].copy_from_slice(&it.ids);
        types[at..at + it.len()].copy_from_slice(&it.type_ids);
        mask[at..at + it.len()].fill(1);
    }
    Ok(ModelInput::new(
        Tensor::from_vec(ids, (b, seq), device)?,
        Tensor::from_vec(mask, (b, seq), device)?,
    )
    .with_token_types(Tensor::from_vec(types, (b, seq), device)?))
}

/// The labels of a batch as a tensor: `(b,)` u32 class ids, or `(b,)` f32 scores.
///
/// Takes `&[Label]` or `&[Option<Label>]` (e.g. straight from [`crate::data::Example::label`]).
///
/// # Errors
/// An empty batch, a missing label (naming its position), or classes mixed with scores.
pub fn label_tensor<L: Copy + Into<Option<Label>>>(
    labels: &[L],
    device: &Device,
) -> Result<Tensor> {
    let labels = labels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            (*l).into().ok_or_else(|| {
                op_error(
                    "labels",
                    format!("item {i} has no label; expected a labelled batch"),
                )
            })
        })
        .collect::<Result<Vec<Label>>>()?;
    let Some(first) = labels.first() else {
        return Err(op_error(
            "labels",
            "empty batch; expected at least one label",
        ));
    };
    let mixed = |i: usize, l: &Label| {
        op_error(
            "labels",
            format!(
                "item {i} is a {} but item 0 is a {}; a batch cannot mix them",
                l.kind(),
                first.kind()
            ),
        )
    };
    match first {
        Label::Class(_) => {
            let v = labels
                .iter()
                .enumerate()
                .map(|(i, l)| l.class().ok_or_else(|| mixed(i, l)))
                .collect::<Result<Vec<u32>>>()?;
            Ok(Tensor::new(v, device)?)
        }
        Label::Score(_) => {
            let v = labels
                .iter()
                .enumerate()
                .map(|(i, l)| l.score().ok_or_else(|| mixed(i, l)))
                .collect::<Result<Vec<f32>>>()?;
            Ok(Tensor::new(v, device)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::DType;

    use super::*;

    #[test]
    fn held_out_split_is_deterministic_disjoint_and_complete() {
        let (train, held) = held_out_split(100, 0.1, 7);
        assert_eq!((train.len(), held.len()), (90, 10));
        assert_eq!(held_out_split(100, 0.1, 7), (train.clone(), held.clone()));
        assert_ne!(
            held_out_split(100, 0.1, 8).1,
            held,
            "another seed, another split"
        );
        let mut all: Vec<usize> = train.iter().chain(&held).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert!(train.windows(2).all(|w| w[0] < w[1]));
        assert!(held.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn held_out_split_edge_cases() {
        assert_eq!(held_out_split(0, 0.1, 1), (vec![], vec![]));
        assert_eq!(held_out_split(1, 0.5, 1), (vec![0], vec![]));
        // Tiny fractions still hold one out; huge ones still train on one.
        let (t, h) = held_out_split(2, 0.01, 1);
        assert_eq!((t.len(), h.len()), (1, 1));
        let (t, h) = held_out_split(5, 1.0, 1);
        assert_eq!((t.len(), h.len()), (1, 4));
        assert_eq!(held_out_split(5, 0.0, 1).1, Vec::<usize>::new());
        assert_eq!(held_out_split(5, f64::NAN, 1).1, Vec::<usize>::new());
        assert_eq!(held_out_split(5, -1.0, 1).1, Vec::<usize>::new());
    }

    fn covers_once(batches: &[Vec<usize>], n: usize) {
        let mut all: Vec<usize> = batches.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..n).collect::<Vec<_>>());
    }

    #[test]
    fn bucketed_batches_cover_every_index_once_and_group_lengths() {
        let lengths: Vec<usize> = (0..1000).map(|i| (i * 37) % 91 + 3).collect();
        for bucket in [false, true] {
            let b = batch_order(&lengths, 8, 3, 0, bucket);
            covers_once(&b, 1000);
            assert_eq!(b.len(), 125);
            assert_eq!(b, batch_order(&lengths, 8, 3, 0, bucket), "deterministic");
            assert_ne!(b, batch_order(&lengths, 8, 3, 1, bucket), "epochs differ");
            assert_ne!(
                batch_order(&lengths, 8, 4, 0, bucket),
                batch_order(&lengths, 8, 3, 1, bucket)
            );
        }
        // Bucketing: within-batch length spread is far below the unbucketed one.
        let spread = |bs: &[Vec<usize>]| -> usize {
            bs.iter()
                .map(|b| {
                    let l: Vec<usize> = b.iter().map(|&i| lengths[i]).collect();
                    l.iter().max().unwrap() - l.iter().min().unwrap()
                })
                .sum()
        };
        let plain = spread(&batch_order(&lengths, 8, 3, 0, false));
        let bucketed = spread(&batch_order(&lengths, 8, 3, 0, true));
        assert!(bucketed * 5 < plain, "bucketed {bucketed} vs plain {plain}");
        // Uneven sizes and batch size 0.
        let b = batch_order(&lengths[..13], 5, 1, 2, true);
        covers_once(&b, 13);
        assert_eq!(b.iter().map(Vec::len).sum::<usize>(), 13);
        covers_once(&batch_order(&lengths[..3], 0, 1, 0, true), 3);
        assert!(batch_order(&[], 4, 1, 0, true).is_empty());
    }

    #[test]
    fn sequential_batches_are_longest_first() {
        let b = sequential_batches(&[3, 9, 5, 9, 1], 2);
        assert_eq!(b, vec![vec![1, 3], vec![2, 0], vec![4]]);
        covers_once(&b, 5);
    }

    fn enc(ids: &[u32], types: &[u32]) -> Encoded {
        Encoded {
            ids: ids.to_vec(),
            type_ids: types.to_vec(),
        }
    }

    #[test]
    fn collate_pads_to_the_longest_and_masks() {
        let a = enc(&[2, 10, 11, 3], &[0, 0, 0, 0]);
        let b = enc(&[2, 12, 3, 13, 3], &[0, 0, 0, 1, 1]);
        let c = enc(&[2, 3], &[0, 0]);
        let x = collate(&[&a, &b, &c], 7, &Device::Cpu).unwrap();
        assert_eq!(x.input_ids.dims(), &[3, 5]);
        assert_eq!(x.input_ids.dtype(), DType::U32);
        assert_eq!(
            x.input_ids.to_vec2::<u32>().unwrap(),
            vec![
                vec![2, 10, 11, 3, 7],
                vec![2, 12, 3, 13, 3],
                vec![2, 3, 7, 7, 7]
            ]
        );
        assert_eq!(
            x.token_type_ids.as_ref().unwrap().to_vec2::<u32>().unwrap(),
            vec![
                vec![0, 0, 0, 0, 0],
                vec![0, 0, 0, 1, 1],
                vec![0, 0, 0, 0, 0]
            ]
        );
        assert_eq!(
            x.attention_mask.to_vec2::<u32>().unwrap(),
            vec![
                vec![1, 1, 1, 1, 0],
                vec![1, 1, 1, 1, 1],
                vec![1, 1, 0, 0, 0]
            ]
        );
    }

    #[test]
    fn collate_errors() {
        let err = collate(&[], 0, &Device::Cpu).unwrap_err();
        assert_eq!(
            err.to_string(),
            "collate: empty batch; expected at least one example"
        );
        let bad = enc(&[2, 3], &[0]);
        let err = collate(&[&bad], 0, &Device::Cpu).unwrap_err();
        assert_eq!(
            err.to_string(),
            "collate: item 0 has 2 token ids and 1 type ids; expected the same non-zero count"
        );
    }

    #[test]
    fn label_tensors() {
        let t = label_tensor(&[Label::Class(1), Label::Class(0)], &Device::Cpu).unwrap();
        assert_eq!(
            (t.dtype(), t.to_vec1::<u32>().unwrap()),
            (DType::U32, vec![1, 0])
        );
        let t = label_tensor(
            &[Some(Label::Score(0.5)), Some(Label::Score(4.0))],
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(
            (t.dtype(), t.to_vec1::<f32>().unwrap()),
            (DType::F32, vec![0.5, 4.0])
        );
        let err = label_tensor(&[Label::Class(1), Label::Score(0.5)], &Device::Cpu).unwrap_err();
        assert_eq!(
            err.to_string(),
            "labels: item 1 is a score but item 0 is a class; a batch cannot mix them"
        );
        let err = label_tensor(&[Some(Label::Class(1)), None], &Device::Cpu).unwrap_err();
        assert_eq!(
            err.to_string(),
            "labels: item 1 has no label; expected a labelled batch"
        );
        let err = label_tensor::<Label>(&[], &Device::Cpu).unwrap_err();
        assert_eq!(
            err.to_string(),
            "labels: empty batch; expected at least one label"
        );
    }
}
