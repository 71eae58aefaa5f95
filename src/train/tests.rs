//! Trainer behaviour on a tiny random BERT: NaN stop, early stopping, gradient accumulation,
//! clipping, held-out selection restoring the best weights.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};

use super::step::{accumulate_for_tests, clip_for_tests};
use super::*;
use crate::data::{Encoded, Label, collate, label_tensor};
use crate::models::{BertConfig, BertForSequenceClassification, Model, Pooling};

fn model() -> BertForSequenceClassification {
    let cfg = BertConfig {
        hidden_dropout_prob: 0.0,
        attention_probs_dropout_prob: 0.0,
        ..BertConfig::tiny()
    };
    BertForSequenceClassification::random(&cfg, 2, Pooling::Mean, DType::F32, &Device::Cpu, 1)
        .unwrap()
}

/// Batch `k` of a fixed toy set: 4 sequences whose label is their first real token's parity.
fn batch(k: usize) -> Batch {
    let items: Vec<Encoded> = (0..4)
        .map(|i| {
            let t = (10 + 7 * k + 3 * i) as u32 % 90 + 5;
            Encoded {
                ids: vec![2, t, t + 1, 3],
                type_ids: vec![0; 4],
            }
        })
        .collect();
    let labels: Vec<Label> = items.iter().map(|e| Label::Class(e.ids[1] % 2)).collect();
    let refs: Vec<&Encoded> = items.iter().collect();
    Batch {
        input: collate(&refs, 0, &Device::Cpu).unwrap(),
        labels: label_tensor(&labels, &Device::Cpu).unwrap(),
        rows: None,
        choices: None,
    }
}

fn run(
    m: &dyn Model,
    cfg: &TrainConfig,
    evaluate: &mut EvaluateFn<'_>,
    observers: &mut [&mut dyn Observer],
) -> crate::Result<TrainSummary> {
    let mut batches = |_epoch: usize| Ok((0..6).map(batch).collect());
    train(
        cfg,
        TrainJob {
            model: m,
            vars: m.head_vars(),
            objective: &CrossEntropy,
            batches: &mut batches,
            batches_per_epoch: 6,
            evaluate,
            checkpoint_dir: None,
        },
        observers,
    )
}

#[test]
fn a_diverging_loss_stops_with_a_clear_error() {
    let m = model();
    let cfg = TrainConfig {
        lr: 1e30,
        max_grad_norm: None,
        epochs: 5,
        ..TrainConfig::default()
    };
    let mut eval = |_: &dyn Model| Ok((0.0, BTreeMap::new()));
    let err = run(&m, &cfg, &mut eval, &mut []).unwrap_err().to_string();
    assert!(err.starts_with("training step "), "{err}");
    assert!(err.contains("the loss is"), "{err}");
}

#[test]
fn early_stopping_after_patience_evaluations_without_improvement() {
    let m = model();
    let cfg = TrainConfig {
        epochs: 10,
        eval_every: Some(1),
        patience: Some(2),
        ..TrainConfig::default()
    };
    // The held-out score never improves after the first evaluation.
    let mut eval = |_: &dyn Model| Ok((0.5, BTreeMap::from([("accuracy".to_string(), 0.5)])));
    let s = run(&m, &cfg, &mut eval, &mut []).unwrap();
    assert!(s.stopped_early);
    assert_eq!(s.steps, 3);
    assert_eq!(s.best_step, 1);
}

#[test]
fn the_best_evaluations_weights_are_restored() {
    let m = model();
    let cfg = TrainConfig {
        epochs: 1,
        eval_every: Some(2),
        lr: 1e-2,
        ..TrainConfig::default()
    };
    // Best at step 2; remember the head weights the evaluation saw then.
    let mut seen: Vec<Vec<f32>> = Vec::new();
    let mut calls = 0;
    let mut eval = |m: &dyn Model| {
        calls += 1;
        let w = m.head_vars()[0]
            .1
            .as_tensor()
            .flatten_all()?
            .to_vec1::<f32>()?;
        seen.push(w);
        let score = if calls == 1 { 0.9 } else { 0.1 };
        Ok((score, BTreeMap::new()))
    };
    let s = run(&m, &cfg, &mut eval, &mut []).unwrap();
    assert_eq!(s.best_step, 2);
    let now = m.head_vars()[0]
        .1
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(now, seen[0]);
    assert_ne!(now, seen[2]);
}

#[test]
fn accumulated_micro_batches_give_the_mean_gradient() {
    let m = model();
    let vars: Vec<candle_core::Var> = m.head_vars().into_iter().map(|(_, v)| v).collect();
    let (b0, b1) = (batch(0), batch(1));
    let (l2, g2, _) = accumulate_for_tests(&m, &[b0.clone(), b1.clone()], &vars);
    let (la, ga, _) = accumulate_for_tests(&m, &[b0], &vars);
    let (lb, gb, _) = accumulate_for_tests(&m, &[b1], &vars);
    assert!((l2 - (la + lb) / 2.0).abs() < 1e-6);
    for i in 0..vars.len() {
        let mean = ((ga[i].as_ref().unwrap() + gb[i].as_ref().unwrap()).unwrap() * 0.5).unwrap();
        let d = (g2[i].as_ref().unwrap() - mean)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-6, "var {i}: {d}");
    }
}

#[test]
fn clipping_scales_to_the_max_norm() {
    let g = vec![
        Some(Tensor::new(&[3.0f32, 0.0], &Device::Cpu).unwrap()),
        None,
        Some(Tensor::new(&[4.0f32], &Device::Cpu).unwrap()),
    ];
    let (clipped, norm) = clip_for_tests(g.clone(), Some(1.0));
    assert!((norm - 5.0).abs() < 1e-9);
    let a = clipped[0].as_ref().unwrap().to_vec1::<f32>().unwrap();
    assert!((a[0] - 0.6).abs() < 1e-5, "{a:?}");
    assert!(clipped[1].is_none());
    let (same, _) = clip_for_tests(g, Some(10.0));
    assert_eq!(
        same[2].as_ref().unwrap().to_vec1::<f32>().unwrap(),
        vec![4.0]
    );
}

#[test]
fn invalid_settings_name_the_field() {
    let bad = TrainConfig {
        grad_accum: 0,
        ..TrainConfig::default()
    };
    let err = bad.validate().unwrap_err().to_string();
    assert!(err.contains("`grad_accum`"), "{err}");
    let bad = TrainConfig {
        warmup_ratio: 1.5,
        ..TrainConfig::default()
    };
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("`warmup_ratio`")
    );
}

/// Causal-LM micro-batches weigh by their scored tokens: a step over a batch of 3 targets and
/// one of 1 has the loss and gradients of one batch holding all 4 (not the mean of the two
/// batch means).
#[test]
fn causal_lm_accumulation_is_the_mean_over_all_scored_tokens() {
    use crate::data::{LmTokens, lm_batch};
    use crate::models::heads::CausalLm;
    use crate::models::llama::{Llama, LlamaConfig};
    let llama = Llama::random(&LlamaConfig::tiny(), 0.2, DType::F32, &Device::Cpu, 4).unwrap();
    let mut lm = CausalLm::new(llama);
    // Two base tensors made trainable, as full fine-tuning does.
    let mut vars: Vec<Var> = Vec::new();
    for base in lm.base_tensors_mut().unwrap() {
        if base.name == "model.norm.weight" || base.name.ends_with("0.self_attn.q_proj.weight") {
            let v = Var::from_tensor(base.tensor).unwrap();
            *base.tensor = v.as_tensor().clone();
            vars.push(v);
        }
    }
    assert_eq!(vars.len(), 2);
    let long = LmTokens {
        ids: vec![5, 9, 13, 17],
        trained: vec![false, true, true, true],
    };
    let short = LmTokens {
        ids: vec![7, 8],
        trained: vec![false, true],
    };
    let batch = |rows: &[&LmTokens]| {
        let (input, rows, labels) = lm_batch(rows, 0, &Device::Cpu).unwrap();
        Batch {
            input,
            labels,
            rows: Some(rows),
            choices: None,
        }
    };
    let (split, gs, _) = accumulate_for_tests(&lm, &[batch(&[&long]), batch(&[&short])], &vars);
    let (whole, gw, _) = accumulate_for_tests(&lm, &[batch(&[&long, &short])], &vars);
    assert!((split - whole).abs() < 1e-5, "{split} vs {whole}");
    for (a, b) in gs.iter().zip(&gw) {
        if let (Some(a), Some(b)) = (a, b) {
            let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
            assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
        }
    }
}

/// Stops before the first step, or at a given step (a search's rung pause).
struct PauseAt {
    start: bool,
    step: usize,
    evals: Vec<usize>,
}

impl Observer for PauseAt {
    fn on_start(&mut self, _total: usize, _start_step: usize) -> Control {
        if self.start {
            Control::Stop
        } else {
            Control::Continue
        }
    }

    fn on_step(&mut self, s: &StepReport) -> Control {
        if s.step >= self.step {
            Control::Stop
        } else {
            Control::Continue
        }
    }

    fn on_eval(&mut self, e: &EvalReport) -> Control {
        self.evals.push(e.step);
        Control::Continue
    }
}

#[test]
fn an_observer_pauses_before_the_first_step_or_at_a_step_with_an_evaluation_there() {
    let m = model();
    let cfg = TrainConfig {
        epochs: 2,
        ..TrainConfig::default()
    };
    let before: Vec<Vec<f32>> = m
        .head_vars()
        .iter()
        .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    let mut eval = |_: &dyn Model| Ok((0.5, BTreeMap::new()));
    let mut at_start = PauseAt {
        start: true,
        step: usize::MAX,
        evals: Vec::new(),
    };
    let s = run(&m, &cfg, &mut eval, &mut [&mut at_start]).unwrap();
    assert_eq!((s.steps, s.stopped_early), (0, true));
    assert!(at_start.evals.is_empty());
    let after: Vec<Vec<f32>> = m
        .head_vars()
        .iter()
        .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    assert_eq!(before, after, "no step taken");

    // Six batches an epoch, evaluated at epoch ends: a pause at step 4 is evaluated there.
    let mut at_four = PauseAt {
        start: false,
        step: 4,
        evals: Vec::new(),
    };
    let s = run(&m, &cfg, &mut eval, &mut [&mut at_four]).unwrap();
    assert_eq!((s.steps, s.stopped_early), (4, true));
    assert_eq!(at_four.evals, [4]);
}

/// The vendored candle's backprop (vendor/README.md) stores a node's first gradient as it is:
/// the sums must still be exact, and a first gradient that is a view (transpose, broadcast,
/// narrow) must come out contiguous, as upstream's zeros-plus-add made it.
#[test]
fn first_gradients_stored_by_the_patched_backprop_are_exact_and_contiguous() {
    let dev = Device::Cpu;
    let x = Var::new(&[[1f32, 2., 3.], [4., 5., 6.]], &dev).unwrap();
    let w = Tensor::new(&[[1f32, -1.], [2., 0.5], [0., 3.]], &dev).unwrap();
    let b = Var::new(&[0.5f32, -1., 2.], &dev).unwrap();
    let z = Var::new(&[[7f32, 8., 9.]], &dev).unwrap();

    // A transposed view as x's only gradient: d/dx Σ (xᵀ ⊙ w) = wᵀ.
    let loss = (x.t().unwrap() * &w).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    let gx = g.get(&x).unwrap();
    assert!(gx.is_contiguous());
    assert_eq!(
        gx.to_vec2::<f32>().unwrap(),
        w.t().unwrap().to_vec2::<f32>().unwrap()
    );

    // Two uses of x (the stored-then-added path): d/dx Σ (x² + x) = 2x + 1.
    let loss = ((x.as_tensor() * x.as_tensor()).unwrap() + x.as_tensor())
        .unwrap()
        .sum_all()
        .unwrap();
    let g = loss.backward().unwrap();
    let want = x
        .as_tensor()
        .affine(2., 1.)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(g.get(&x).unwrap().to_vec2::<f32>().unwrap(), want);

    // A broadcast operand: d/db Σ (x + b)² sums 2 (x + b) over the rows.
    let loss = x
        .broadcast_add(&b)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap();
    let g = loss.backward().unwrap();
    let gb = g.get(&b).unwrap();
    assert!(gb.is_contiguous());
    assert_eq!(gb.to_vec1::<f32>().unwrap(), [12f32, 10., 26.]);

    // Narrowed views of one gradient (cat's backward), the second at an offset.
    let cat = Tensor::cat(&[x.as_tensor(), z.as_tensor()], 0).unwrap();
    let loss = (cat * 3.).unwrap().sqr().unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    let gz = g.get(&z).unwrap();
    assert!(gz.is_contiguous());
    assert_eq!(gz.to_vec2::<f32>().unwrap(), [[126f32, 144., 162.]]);
    let want = x
        .as_tensor()
        .affine(18., 0.)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(g.get(&x).unwrap().to_vec2::<f32>().unwrap(), want);

    // The layer norm's backward packs dx, dγ and dβ in one (tokens + 2, d) buffer. Trained γ
    // and β (full fine-tuning) keep their gradients until the optimizer step, so theirs must
    // be copies, not views holding the token-sized buffer.
    let (gamma, beta) = (
        Var::new(&[1f32, 2., 3.], &dev).unwrap(),
        Var::new(&[0f32, 0., 1.], &dev).unwrap(),
    );
    let y =
        crate::ops::layer_norm(x.as_tensor(), gamma.as_tensor(), beta.as_tensor(), 1e-5).unwrap();
    let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    for p in [&gamma, &beta] {
        let gp = g.get(p).unwrap();
        assert_eq!(gp.layout().start_offset(), 0);
        assert!(gp.is_contiguous());
    }
}
