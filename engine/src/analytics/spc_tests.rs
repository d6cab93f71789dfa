//! The Western Electric rules on hand-made series (each fires at the point that completes its
//! pattern, not one point earlier), and the in-control average run lengths of each chart over
//! simulated in-control layers against the textbook figures (DESIGN §6).

use super::*;

const UNIT: Baseline = Baseline { centre: 0.0, sigma: 1.0 };

/// The rules each point of `xs` raises on a Shewhart chart.
fn rules_per_point(xs: &[f64]) -> Vec<Vec<SpcRule>> {
    let mut c = Chart::new(ChartKind::Shewhart, UNIT);
    xs.iter().enumerate().map(|(i, x)| c.push(i as u32, *x).into_iter().map(|s| s.rule).collect()).collect()
}

/// The index of the only point that raised anything, and what.
fn only_signal(xs: &[f64]) -> (usize, Vec<SpcRule>) {
    let per = rules_per_point(xs);
    let hits: Vec<(usize, Vec<SpcRule>)> = per.into_iter().enumerate().filter(|(_, r)| !r.is_empty()).collect();
    assert_eq!(hits.len(), 1, "exactly one signalling point in {xs:?}: {hits:?}");
    hits.into_iter().next().unwrap_or_default()
}

#[test]
fn western_electric_rules_fire_where_their_pattern_completes() {
    assert_eq!(only_signal(&[0.5, -1.0, 1.9, 3.1]), (3, vec![SpcRule::WeBeyond3Sigma]));
    assert_eq!(only_signal(&[0.5, 2.9, 3.1]), (2, vec![SpcRule::WeBeyond3Sigma, SpcRule::We2Of3Beyond2Sigma]), "both patterns complete there");
    assert_eq!(only_signal(&[-0.5, -3.2]), (1, vec![SpcRule::WeBeyond3Sigma]));
    // Two of three beyond 2σ: the second one completes it; opposite sides never do.
    assert_eq!(only_signal(&[0.0, 2.5, 0.3, 2.2]), (3, vec![SpcRule::We2Of3Beyond2Sigma]));
    assert!(rules_per_point(&[2.5, -2.5, 0.0, 2.5, 0.0, 0.0, -2.4]).iter().all(Vec::is_empty));
    // Four of five beyond 1σ on one side.
    assert_eq!(only_signal(&[1.5, 1.2, 0.2, 1.1, 1.3]), (4, vec![SpcRule::We4Of5Beyond1Sigma]));
    assert!(rules_per_point(&[1.5, 1.2, 0.2, 0.1, 1.3, -1.5, 1.1]).iter().all(Vec::is_empty));
    // Eight on one side of the centre: the eighth, not the seventh.
    let xs = [0.5, 0.2, 0.7, 0.1, 0.9, 0.3, 0.4, 0.6];
    assert_eq!(only_signal(&xs), (7, vec![SpcRule::We8SameSide]));
    assert!(rules_per_point(&xs[..7]).iter().all(Vec::is_empty));
    // A signal restarts the history: a ninth point on the same side is not a second signal.
    assert!(rules_per_point(&[0.5, 0.2, 0.7, 0.1, 0.9, 0.3, 0.4, 0.6, 0.5])[8].is_empty());
}

#[test]
fn a_signal_names_its_layers_and_limits() {
    let mut c = Chart::new(ChartKind::Shewhart, Baseline { centre: 10.0, sigma: 2.0 });
    assert!(c.push(40, 15.0).is_empty());
    assert!(c.push(41, 11.0).is_empty());
    let s = c.push(42, 14.5);
    assert_eq!(s.len(), 1);
    assert_eq!((s[0].rule, s[0].layers.clone(), s[0].lower, s[0].upper, s[0].centre), (SpcRule::We2Of3Beyond2Sigma, vec![40, 41, 42], 6.0, 14.0, 10.0));
    let mut c = Chart::new(ChartKind::Cusum { k: 0.5, h: 4.0 }, UNIT);
    assert!(c.push(1, -0.2).is_empty());
    assert!(c.push(2, 2.0).is_empty());
    assert!(c.push(3, 2.0).is_empty());
    let s = c.push(4, 2.0);
    assert_eq!((s[0].rule, s[0].layers.clone()), (SpcRule::CusumUpper, vec![2, 3, 4]), "the upper run began at layer 2: {s:?}");
}

#[test]
fn phase_one_estimates_sigma_from_the_moving_range() {
    let b = Baseline::estimate(&[1.0, 3.0, 2.0, 4.0]).expect("a baseline");
    assert!((b.centre - 2.5).abs() < 1e-12 && (b.sigma - (5.0 / 3.0) / D2).abs() < 1e-12, "{b:?}");
    assert_eq!(Baseline::estimate(&[2.0, 2.0, 2.0]), None, "no variation, no chart");
    assert_eq!(Baseline::estimate(&[2.0]), None);
}

#[test]
fn chart_state_round_trips_through_json() {
    let mut c = Chart::new(ChartKind::Ewma { lambda: 0.2, l: 3.0 }, UNIT);
    c.push(0, 0.7);
    let back: Chart = serde_json::from_str(&serde_json::to_string(&c).expect("json")).expect("parse");
    assert_eq!(back, c);
}

/// SplitMix64 and Box–Muller: reproducible standard normal draws.
struct Normal(u64);

impl Normal {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn next(&mut self) -> f64 {
        let (u1, u2) = (self.uniform().max(f64::MIN_POSITIVE), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// Average run length between signals over `n` in-control layers (counting the signals of
/// `rules`, or all when empty).
fn arl(kind: ChartKind, rules: &[SpcRule], n: u32, seed: u64) -> f64 {
    let mut c = Chart::new(kind, UNIT);
    let mut rng = Normal(seed);
    let mut signals = 0u64;
    for layer in 0..n {
        let s = c.push(layer, rng.next());
        signals += s.iter().filter(|s| rules.is_empty() || rules.contains(&s.rule)).count().min(1) as u64;
    }
    f64::from(n) / signals.max(1) as f64
}

#[test]
fn in_control_average_run_lengths_match_the_textbook() {
    const N: u32 = 2_000_000;
    let cases = [
        ("rule 1 alone", ChartKind::Shewhart, vec![SpcRule::WeBeyond3Sigma], 370.4),
        ("all four Western Electric rules", ChartKind::Shewhart, vec![], 91.75),
        ("EWMA λ = 0.2, L = 3", ChartKind::Ewma { lambda: 0.2, l: 3.0 }, vec![], 562.0),
        // Montgomery, Table 9.11: λ = 0.1 needs L = 2.814 for an ARL of 500 (DESIGN's "L = 2.7,
        // ≈ 500" is about 375 here, as in Lucas and Saccucci's tables).
        ("EWMA λ = 0.1, L = 2.814", ChartKind::Ewma { lambda: 0.1, l: 2.814 }, vec![], 500.0),
        ("CUSUM k = 0.5, h = 4", ChartKind::Cusum { k: 0.5, h: 4.0 }, vec![], 168.0),
        ("CUSUM k = 0.5, h = 5", ChartKind::Cusum { k: 0.5, h: 5.0 }, vec![], 465.0),
    ];
    for (i, (what, kind, rules, textbook)) in cases.into_iter().enumerate() {
        let got = arl(kind, &rules, N, 0x5eed + i as u64);
        let ratio = got / textbook;
        eprintln!("{what}: ARL {got:.1} over {N} in-control layers, textbook {textbook}");
        assert!((0.8..=1.2).contains(&ratio), "{what}: ARL {got:.1} over {N} in-control layers, textbook {textbook} (ratio {ratio:.3})");
    }
}

/// A cell's constant-space phase I gives, bit for bit, what the estimate over the list of its
/// points gives, including the slide over points that do not vary.
#[test]
fn phase_one_sums_estimate_what_the_list_does() {
    let mut rng = Normal(7);
    let values: Vec<f64> = (0..20).map(|_| 1500.0 + 12.0 * rng.next()).collect();
    let mut p = PhaseOneSums::default();
    let got: Vec<_> = values.iter().filter_map(|&x| p.push(x, 20)).collect();
    assert_eq!(got, vec![(Baseline::estimate(&values).expect("varies"), 20)]);
    // Constant points slide on; the first varying one completes phase I over the latest three.
    let mut p = PhaseOneSums::default();
    for _ in 0..5 {
        assert_eq!(p.push(7.0, 3), None);
    }
    assert_eq!(p.len(), 2);
    assert_eq!(p.push(9.0, 3), Some((Baseline::estimate(&[7.0, 7.0, 9.0]).expect("varies"), 3)));
}
