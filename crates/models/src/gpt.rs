//! `gpt`: a decoder-only transformer for character-level language modelling. Its
//! activation memory grows with micro-batch x seq_len, which makes it the memory-heavy
//! workload of oomph's OOM work.
//!
//! Pre-norm blocks (`x + attn(ln1(x))`, then `x + mlp(ln2(x))`) with causal multi-head
//! self-attention and a GELU MLP. Dropout (embeddings, attention weights, attention output,
//! MLP output) is keyed by `(seed, step, sample, call site)` ([`oomph_train::random::dropout`]),
//! so a sample's masks do not depend on how the effective batch is split into micro-batches.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{backend::Backend, Bool, Int, Tensor};
use oomph_data::DataInfo;
use oomph_train::feed::TokenBatch;
use oomph_train::random::{dropout, site, site_at};
use oomph_train::tensors::{correct, cross_entropy_per_row, masked_softmax};
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
    blocks: Vec<Block<B>>,
    norm: LayerNorm<B>,
    head: Linear<B>,
    seq_len: usize,
    /// Dropout probability of the embeddings (the blocks hold their own).
    dropout: f64,
}

/// One pre-norm decoder block: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    ln1: LayerNorm<B>,
    /// Query, key and value projections, fused: `d_model -> 3 * d_model`, without bias. A key
    /// bias only shifts each query's scores by a constant, which the softmax ignores: its
    /// gradient is zero up to rounding, and Adam turns that rounding noise into a random walk
    /// that differs with the micro-batch split. A value bias is the same as the projection's
    /// bias (attention weights sum to 1); the query bias goes with them.
    qkv: Linear<B>,
    /// Attention output projection.
    proj: Linear<B>,
    ln2: LayerNorm<B>,
    /// MLP: `d_model -> d_ff`, GELU, `d_ff -> d_model`.
    fc: Linear<B>,
    out: Linear<B>,
    n_head: usize,
    dropout: f64,
    /// The block's index, part of its dropout call sites.
    layer: usize,
}

/// Dropout call sites; a block's are `site_at(SITE, layer)`.
const EMBEDDING_DROPOUT: u64 = site("gpt.embedding.dropout");
const ATTENTION_WEIGHTS_DROPOUT: u64 = site("gpt.attention.weights.dropout");
const ATTENTION_OUTPUT_DROPOUT: u64 = site("gpt.attention.output.dropout");
const MLP_OUTPUT_DROPOUT: u64 = site("gpt.mlp.output.dropout");

/// What masked attention scores are set to before the softmax (as burn's attention does).
const MASKED_SCORE: f32 = -1.0e4;

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
        blocks: (0..cfg.n_layer)
            .map(|layer| Block {
                ln1: LayerNormConfig::new(cfg.d_model).init(device),
                qkv: LinearConfig::new(cfg.d_model, 3 * cfg.d_model).with_bias(false).init(device),
                proj: LinearConfig::new(cfg.d_model, cfg.d_model).init(device),
                ln2: LayerNormConfig::new(cfg.d_model).init(device),
                fc: LinearConfig::new(cfg.d_model, d_ff).init(device),
                out: LinearConfig::new(d_ff, cfg.d_model).init(device),
                n_head: cfg.n_head,
                dropout: cfg.dropout,
                layer,
            })
            .collect(),
        norm: LayerNormConfig::new(cfg.d_model).init(device),
        head: LinearConfig::new(cfg.d_model, vocab).init(device),
        seq_len: cfg.seq_len,
        dropout: cfg.dropout,
    })
}

impl<B: Backend> Gpt<B> {
    /// Next-token logits `[n, t, vocab]` for inputs `[n, t]`.
    pub fn forward(&self, inputs: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [n, t] = inputs.dims();
        let device = inputs.device();
        let positions = Tensor::<B, 1, Int>::arange(0..t as i64, &device).reshape([1, t]).repeat_dim(0, n);
        let x = self.tok.forward(inputs) + self.pos.forward(positions);
        let mut x = dropout(x, self.dropout, EMBEDDING_DROPOUT);
        // `true` above the diagonal: position i attends to positions <= i.
        let causal = Tensor::<B, 2, Bool>::tril_mask([t, t], 0, &device).reshape([1, 1, t, t]);
        for block in &self.blocks {
            x = block.forward(x, causal.clone());
        }
        self.head.forward(self.norm.forward(x))
    }

    fn logits_targets(&self, batch: TokenBatch<B>) -> (Tensor<B, 2>, Tensor<B, 1, Int>) {
        let [n, t] = batch.targets.dims();
        let (logits, targets) = (self.forward(batch.inputs), batch.targets);
        let vocab = logits.dims()[2];
        (logits.reshape([n * t, vocab]), targets.reshape([n * t]))
    }
}

impl<B: Backend> Block<B> {
    /// `[n, t, d_model]` to `[n, t, d_model]`; `causal` is `[1, 1, t, t]`, `true` where a
    /// query may not attend.
    fn forward(&self, x: Tensor<B, 3>, causal: Tensor<B, 4, Bool>) -> Tensor<B, 3> {
        let [n, t, d] = x.dims();
        let (h, p) = (self.n_head, self.dropout);
        let mut qkv = self
            .qkv
            .forward(self.ln1.forward(x.clone()))
            .chunk(3, 2)
            .into_iter()
            .map(|m| m.reshape([n, t, h, d / h]).swap_dims(1, 2));
        let (q, k, v) = (qkv.next().unwrap(), qkv.next().unwrap(), qkv.next().unwrap());
        let scores = q.matmul(k.swap_dims(2, 3)).div_scalar(((d / h) as f64).sqrt());
        let weights = masked_softmax(scores, causal, MASKED_SCORE, 3);
        let weights = dropout(weights, p, site_at(ATTENTION_WEIGHTS_DROPOUT, self.layer));
        let context = weights.matmul(v).swap_dims(1, 2).reshape([n, t, d]);
        let x = x + dropout(self.proj.forward(context), p, site_at(ATTENTION_OUTPUT_DROPOUT, self.layer));
        let y = self.out.forward(gelu(self.fc.forward(self.ln2.forward(x.clone()))));
        x + dropout(y, p, site_at(MLP_OUTPUT_DROPOUT, self.layer))
    }
}

impl<B: Backend> Objective<B> for Gpt<B> {
    type Batch = TokenBatch<B>;

    fn loss(&self, batch: TokenBatch<B>) -> Loss<B> {
        let (logits, targets) = self.logits_targets(batch);
        Loss { sum: cross_entropy_per_row(logits, targets).sum() }
    }

    fn evaluate(&self, batch: TokenBatch<B>) -> Evaluation<B> {
        let (logits, targets) = self.logits_targets(batch);
        let tokens = targets.dims()[0] as f64;
        let acc = correct(logits.clone(), targets.clone());
        Evaluation {
            loss_sum: cross_entropy_per_row(logits, targets).sum(),
            metrics: vec![MetricSum { name: "accuracy", sum: acc, weight: tokens }],
        }
    }
}
