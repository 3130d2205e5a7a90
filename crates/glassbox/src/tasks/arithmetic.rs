//! Two-operand arithmetic as MIB's arithmetic tasks: `"{a}+{b}="` → the sum, `"{a}-{b}="` → the
//! difference; the counterfactual has other random operands with another result (MIB's
//! `random_counterfactual`), the incorrect answer is the counterfactual's result. Results are
//! kept to those the model writes as one token (digits alone in tokenizers that split numbers
//! into digits, as SmolLM2's and LLaMA's do; up to 999 where a vocabulary has whole numbers).

use crate::error::Result;
use crate::inputs::TaskPrompt;
use crate::model::Model;
use crate::tasks::{sample_pairs, single_token, Rng};

/// The largest operand tried.
const MAX_OPERAND: usize = 99;

/// `n` arithmetic prompts (addition and subtraction alternating), seeded.
pub fn generate(model: &Model, n: usize, seed: u64) -> Result<Vec<TaskPrompt>> {
    // The largest result that is one token: 9 with digit-split numbers.
    let max_result = (0..=MAX_OPERAND).take_while(|r| single_token(model, &r.to_string())).last().unwrap_or(0);
    let mut rng = Rng::new(seed);
    sample_pairs(model, n, "arithmetic", |i| {
        let add = i % 2 == 0;
        let draw = |rng: &mut Rng| -> (usize, usize, usize) {
            if add {
                let a = rng.below(max_result + 1);
                let b = rng.below(max_result - a + 1);
                (a, b, a + b)
            } else {
                let a = rng.below(max_result + 1);
                let b = rng.below(a + 1);
                (a, b, a - b)
            }
        };
        let (a, b, r) = draw(&mut rng);
        let (mut a2, mut b2, mut r2) = draw(&mut rng);
        for _ in 0..100 {
            if r2 != r {
                break;
            }
            (a2, b2, r2) = draw(&mut rng);
        }
        let op = if add { '+' } else { '-' };
        let features = [("operator", op.to_string()), ("a", a.to_string()), ("b", b.to_string()), ("result", r.to_string())];
        (format!("{a}{op}{b}="), format!("{a2}{op}{b2}="), r.to_string(), r2.to_string(), features.map(|(k, v)| (k.to_string(), v)).into(), if add { "addition" } else { "subtraction" }.to_string())
    })
}
