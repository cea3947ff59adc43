//! `params`: a model kind's own keys deserialised with errors that name `model.<key>`.

use super::*;

#[derive(Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Mlp {
    hidden: usize,
    layers: usize,
    activation: String,
    dropout: f64,
}

impl Default for Mlp {
    fn default() -> Self {
        Self { hidden: 64, layers: 2, activation: "relu".into(), dropout: 0.0 }
    }
}

#[derive(Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Strict {
    n_layer: usize,
    inner: Inner,
}

#[derive(Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Inner {
    width: u32,
}

#[test]
fn params_deserializes_model_keys() {
    let r = ok("[model]\nkind = \"mlp\"\nhidden = 128\nactivation = \"gelu\"\n");
    let m: Mlp = params(&r.model.params, "model", "r.toml").unwrap();
    assert_eq!(m, Mlp { hidden: 128, activation: "gelu".into(), ..Mlp::default() });
    let m: Mlp = params(&Recipe::default().model.params, "model", "r.toml").unwrap();
    assert_eq!(m, Mlp::default());

    let r = ok("[model]\nhiden = 128\n");
    let e = params::<Mlp>(&r.model.params, "model", "r.toml").unwrap_err();
    blames(&e, "r.toml", "model.hiden", &["hidden", "layers", "activation", "dropout", "did you mean `model.hidden`"]);

    let r = ok("[model]\nhidden = \"wide\"\n");
    let e = params::<Mlp>(&r.model.params, "model", "r.toml").unwrap_err();
    blames(&e, "r.toml", "model.hidden", &["\"wide\"", "non-negative integer"]);

    let r = ok("[model]\nn_layer = 2\ninner = { width = -3 }\n");
    let e = params::<Strict>(&r.model.params, "model", "r.toml").unwrap_err();
    blames(&e, "r.toml", "model.inner.width", &["-3"]);
    let r = ok("[model]\ninner = { width = 3 }\n");
    let e = params::<Strict>(&r.model.params, "model", "r.toml").unwrap_err();
    blames(&e, "r.toml", "model.n_layer", &["missing"]);
    let r = ok("[model]\nn_layer = 1\ninner = { width = 3 }\n");
    assert_eq!(
        params::<Strict>(&r.model.params, "model", "r.toml").unwrap(),
        Strict { n_layer: 1, inner: Inner { width: 3 } }
    );
}
