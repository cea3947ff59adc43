//! `gpt`: a decoder-only transformer for character-level language modelling. Its
//! activation memory grows with micro-batch x seq_len, which makes it the memory-heavy
//! workload of oomph's OOM work.

use burn::module::Module;
use burn::nn::attention::generate_autoregressive_mask;
use burn::nn::transformer::{TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput};
use burn::nn::{Dropout, DropoutConfig, Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{backend::Backend, Int, Tensor};
use oomph_data::{Batch, DataInfo};
use oomph_train::tensors::{correct, cross_entropy_per_row, tokens};
use oomph_train::{DataNeeds, Evaluation, Loss, MetricSum, Objective};
use serde::{Deserialize, Serialize};

/// `[model]` keys of `kind = "gpt"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GptConfig {
    /// Transformer blocks. Default `2`.
    pub n_layer: usize,
    /// Attention heads; must divide `d_model`. Default `4`.
    pub n_head: usize,
    /// Embedding width. Default `64`.
    pub d_model: usize,
    /// Context length in characters. Default `64`.
    pub seq_len: usize,
    /// Dropout in attention, feed-forward and embeddings, in `[0, 1)`. Default `0.0`.
    pub dropout: f64,
    /// Feed-forward width. Default `4 * d_model`.
    pub d_ff: Option<usize>,
}

impl Default for GptConfig {
    fn default() -> Self {
        Self { n_layer: 2, n_head: 4, d_model: 64, seq_len: 64, dropout: 0.0, d_ff: None }
    }
}

/// The GPT.
#[derive(Module, Debug)]
pub struct Gpt<B: Backend> {
    tok: Embedding<B>,
    pos: Embedding<B>,
    drop: Dropout,
    blocks: TransformerEncoder<B>,
    norm: LayerNorm<B>,
    head: Linear<B>,
    seq_len: usize,
}

/// The gpt needs windows of `seq_len + 1` characters.
pub fn needs(cfg: &GptConfig) -> DataNeeds {
    DataNeeds { seq_len: Some(cfg.seq_len) }
}

/// Builds a GPT for the data's vocabulary.
pub fn init<B: Backend>(cfg: &GptConfig, info: &DataInfo, device: &B::Device) -> Result<Gpt<B>, String> {
    let vocab =
        info.vocab_size.ok_or_else(|| format!("the gpt needs text data (data.kind = \"text\"), got {}", info.kind))?;
    for (k, v) in [("n_layer", cfg.n_layer), ("n_head", cfg.n_head), ("d_model", cfg.d_model), ("seq_len", cfg.seq_len)]
    {
        if v == 0 {
            return Err(format!("`model.{k}` must be positive"));
        }
    }
    if !cfg.d_model.is_multiple_of(cfg.n_head) {
        return Err(format!("`model.n_head` = {} must divide `model.d_model` = {}", cfg.n_head, cfg.d_model));
    }
    if !(0.0..1.0).contains(&cfg.dropout) {
        return Err(format!("`model.dropout` = {} must be in [0, 1)", cfg.dropout));
    }
    let d_ff = cfg.d_ff.unwrap_or(4 * cfg.d_model);
    Ok(Gpt {
        tok: EmbeddingConfig::new(vocab, cfg.d_model).init(device),
        pos: EmbeddingConfig::new(cfg.seq_len, cfg.d_model).init(device),
        drop: DropoutConfig::new(cfg.dropout).init(),
        blocks: TransformerEncoderConfig::new(cfg.d_model, d_ff, cfg.n_head, cfg.n_layer)
            .with_dropout(cfg.dropout)
            .with_norm_first(true)
            .init(device),
        norm: LayerNormConfig::new(cfg.d_model).init(device),
        head: LinearConfig::new(cfg.d_model, vocab).init(device),
        seq_len: cfg.seq_len,
    })
}

impl<B: Backend> Gpt<B> {
    /// Next-token logits `[n, t, vocab]` for inputs `[n, t]`.
    pub fn forward(&self, inputs: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [n, t] = inputs.dims();
        let device = inputs.device();
        let positions = Tensor::<B, 1, Int>::arange(0..t as i64, &device).reshape([1, t]).repeat_dim(0, n);
        let x = self.tok.forward(inputs) + self.pos.forward(positions);
        let x = self.drop.forward(x);
        let mask = generate_autoregressive_mask::<B>(n, t, &device);
        let x = self.blocks.forward(TransformerEncoderInput::new(x).mask_attn(mask));
        self.head.forward(self.norm.forward(x))
    }

    fn logits_targets(&self, batch: &Batch, device: &B::Device) -> (Tensor<B, 2>, Tensor<B, 1, Int>) {
        let (inputs, targets) = tokens::<B>(batch, device);
        let [n, t] = targets.dims();
        let logits = self.forward(inputs);
        let vocab = logits.dims()[2];
        (logits.reshape([n * t, vocab]), targets.reshape([n * t]))
    }
}

impl<B: Backend> Objective<B> for Gpt<B> {
    fn loss(&self, batch: &Batch, device: &B::Device) -> Loss<B> {
        let (logits, targets) = self.logits_targets(batch, device);
        Loss { sum: cross_entropy_per_row(logits, targets).sum() }
    }

    fn evaluate(&self, batch: &Batch, device: &B::Device) -> Evaluation<B> {
        let (logits, targets) = self.logits_targets(batch, device);
        let tokens = targets.dims()[0] as f64;
        let acc = correct(logits.clone(), targets.clone());
        Evaluation {
            loss_sum: cross_entropy_per_row(logits, targets).sum(),
            metrics: vec![MetricSum { name: "accuracy", sum: acc, weight: tokens }],
        }
    }
}
