//! VADER (Hutto & Gilbert, ICWSM 2014) as vaderSentiment 3.3.2 computes it, rule for rule and in the
//! same floating-point order, so scores are equal to the Python package's (tests/models check it on
//! the reference sentences). Where vaderSentiment has quirks (`_but_check` finds a sentiment by
//! value, not position), they are kept: equal answers matter more here than tidier rules.

include!(concat!(env!("OUT_DIR"), "/lexicon.rs"));

const B_INCR: f64 = 0.293;
const B_DECR: f64 = -0.293;
const C_INCR: f64 = 0.733;
const N_SCALAR: f64 = -0.74;

const NEGATE: &[&str] = &[
    "aint", "arent", "cannot", "cant", "couldnt", "darent", "didnt", "doesnt", "ain't", "aren't", "can't",
    "couldn't", "daren't", "didn't", "doesn't", "dont", "hadnt", "hasnt", "havent", "isnt", "mightnt",
    "mustnt", "neither", "don't", "hadn't", "hasn't", "haven't", "isn't", "mightn't", "mustn't", "neednt",
    "needn't", "never", "none", "nope", "nor", "not", "nothing", "nowhere", "oughtnt", "shant", "shouldnt",
    "uhuh", "wasnt", "werent", "oughtn't", "shan't", "shouldn't", "uh-uh", "wasn't", "weren't", "without",
    "wont", "wouldnt", "won't", "wouldn't", "rarely", "seldom", "despite",
];

const BOOST_UP: &[&str] = &[
    "absolutely", "amazingly", "awfully", "completely", "considerable", "considerably", "decidedly",
    "deeply", "effing", "enormous", "enormously", "entirely", "especially", "exceptional", "exceptionally",
    "extreme", "extremely", "fabulously", "flipping", "flippin", "frackin", "fracking", "fricking",
    "frickin", "frigging", "friggin", "fully", "fuckin", "fucking", "fuggin", "fugging", "greatly", "hella",
    "highly", "hugely", "incredible", "incredibly", "intensely", "major", "majorly", "more", "most",
    "particularly", "purely", "quite", "really", "remarkably", "so", "substantially", "thoroughly", "total",
    "totally", "tremendous", "tremendously", "uber", "unbelievably", "unusually", "utter", "utterly", "very",
];

const BOOST_DOWN: &[&str] = &[
    "almost", "barely", "hardly", "just enough", "kind of", "kinda", "kindof", "kind-of", "less", "little",
    "marginal", "marginally", "occasional", "occasionally", "partly", "scarce", "scarcely", "slight",
    "slightly", "somewhat", "sort of", "sorta", "sortof", "sort-of",
];

const SPECIAL_CASES: &[(&str, f64)] = &[
    ("the shit", 3.0),
    ("the bomb", 3.0),
    ("bad ass", 1.5),
    ("badass", 1.5),
    ("bus stop", 0.0),
    ("yeah right", -2.0),
    ("kiss of death", -1.5),
    ("to die for", 3.0),
    ("beating heart", 3.5),
];

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scores {
    pub neg: f64,
    pub neu: f64,
    pub pos: f64,
    pub compound: f64,
}

fn lexicon(word: &str) -> Option<f64> {
    LEXICON.binary_search_by(|(k, _)| (*k).cmp(word)).ok().map(|i| LEXICON[i].1)
}

fn emoji(c: char) -> Option<&'static str> {
    EMOJIS.binary_search_by(|(k, _)| k.cmp(&c)).ok().map(|i| EMOJIS[i].1)
}

fn booster(word: &str) -> Option<f64> {
    if BOOST_UP.contains(&word) {
        Some(B_INCR)
    } else if BOOST_DOWN.contains(&word) {
        Some(B_DECR)
    } else {
        None
    }
}

fn special_case(seq: &str) -> Option<f64> {
    SPECIAL_CASES.iter().find(|(k, _)| *k == seq).map(|(_, v)| *v)
}

/// Python's `str.isupper()`: some cased character, and no lower-case one.
fn is_upper(word: &str) -> bool {
    word.chars().any(char::is_uppercase) && !word.chars().any(char::is_lowercase)
}

fn negated(word: &str) -> bool {
    NEGATE.contains(&word) || word.contains("n't")
}

fn normalize(score: f64) -> f64 {
    let norm = score / (score * score + 15.0).sqrt();
    norm.clamp(-1.0, 1.0)
}

/// Python's `round(x, digits)`: correctly rounded from the binary value.
fn round(x: f64, digits: usize) -> f64 {
    format!("{x:.digits$}").parse().unwrap()
}

fn strip_punc_if_word(token: &str) -> &str {
    let stripped = token.trim_matches(|c: char| c.is_ascii_punctuation());
    if stripped.chars().count() <= 2 {
        token
    } else {
        stripped
    }
}

fn scalar_inc_dec(word: &str, lower: &str, valence: f64, is_cap_diff: bool) -> f64 {
    let Some(mut scalar) = booster(lower) else { return 0.0 };
    if valence < 0.0 {
        scalar *= -1.0;
    }
    if is_upper(word) && is_cap_diff {
        if valence > 0.0 {
            scalar += C_INCR;
        } else {
            scalar -= C_INCR;
        }
    }
    scalar
}

struct Text<'a> {
    words: Vec<&'a str>,
    lower: Vec<String>,
    is_cap_diff: bool,
}

impl Text<'_> {
    fn in_lexicon(&self, i: usize) -> bool {
        lexicon(&self.lower[i]).is_some()
    }

    fn negation_check(&self, mut valence: f64, start_i: usize, i: usize) -> f64 {
        let l = &self.lower;
        match start_i {
            0 => {
                if negated(&l[i - 1]) {
                    valence *= N_SCALAR;
                }
            }
            1 => {
                if l[i - 2] == "never" && (l[i - 1] == "so" || l[i - 1] == "this") {
                    valence *= 1.25;
                } else if l[i - 2] == "without" && l[i - 1] == "doubt" {
                } else if negated(&l[i - 2]) {
                    valence *= N_SCALAR;
                }
            }
            _ => {
                if (l[i - 3] == "never" && (l[i - 2] == "so" || l[i - 2] == "this"))
                    || (l[i - 1] == "so" || l[i - 1] == "this")
                {
                    valence *= 1.25;
                } else if l[i - 3] == "without" && (l[i - 2] == "doubt" || l[i - 1] == "doubt") {
                } else if negated(&l[i - 3]) {
                    valence *= N_SCALAR;
                }
            }
        }
        valence
    }

    fn special_idioms_check(&self, mut valence: f64, i: usize) -> f64 {
        let l = &self.lower;
        let onezero = format!("{} {}", l[i - 1], l[i]);
        let twoonezero = format!("{} {} {}", l[i - 2], l[i - 1], l[i]);
        let twoone = format!("{} {}", l[i - 2], l[i - 1]);
        let threetwoone = format!("{} {} {}", l[i - 3], l[i - 2], l[i - 1]);
        let threetwo = format!("{} {}", l[i - 3], l[i - 2]);
        for seq in [&onezero, &twoonezero, &twoone, &threetwoone, &threetwo] {
            if let Some(v) = special_case(seq) {
                valence = v;
                break;
            }
        }
        if l.len() - 1 > i {
            if let Some(v) = special_case(&format!("{} {}", l[i], l[i + 1])) {
                valence = v;
            }
        }
        if l.len() - 1 > i + 1 {
            if let Some(v) = special_case(&format!("{} {} {}", l[i], l[i + 1], l[i + 2])) {
                valence = v;
            }
        }
        for n_gram in [&threetwoone, &threetwo, &twoone] {
            if let Some(b) = booster(n_gram) {
                valence += b;
            }
        }
        valence
    }

    fn least_check(&self, mut valence: f64, i: usize) -> f64 {
        let l = &self.lower;
        if i > 1 && !self.in_lexicon(i - 1) && l[i - 1] == "least" {
            if l[i - 2] != "at" && l[i - 2] != "very" {
                valence *= N_SCALAR;
            }
        } else if i > 0 && !self.in_lexicon(i - 1) && l[i - 1] == "least" {
            valence *= N_SCALAR;
        }
        valence
    }

    fn sentiment_valence(&self, item: &str, i: usize) -> f64 {
        let l = &self.lower;
        let Some(base) = lexicon(&l[i]) else { return 0.0 };
        let mut valence = base;
        if l[i] == "no" && i != l.len() - 1 && self.in_lexicon(i + 1) {
            valence = 0.0;
        }
        if (i > 0 && l[i - 1] == "no")
            || (i > 1 && l[i - 2] == "no")
            || (i > 2 && l[i - 3] == "no" && (l[i - 1] == "or" || l[i - 1] == "nor"))
        {
            valence = base * N_SCALAR;
        }
        if is_upper(item) && self.is_cap_diff {
            if valence > 0.0 {
                valence += C_INCR;
            } else {
                valence -= C_INCR;
            }
        }
        for start_i in 0..3 {
            if i > start_i && !self.in_lexicon(i - (start_i + 1)) {
                let j = i - (start_i + 1);
                let mut s = scalar_inc_dec(self.words[j], &l[j], valence, self.is_cap_diff);
                if start_i == 1 && s != 0.0 {
                    s *= 0.95;
                }
                if start_i == 2 && s != 0.0 {
                    s *= 0.9;
                }
                valence += s;
                valence = self.negation_check(valence, start_i, i);
                if start_i == 2 {
                    valence = self.special_idioms_check(valence, i);
                }
            }
        }
        self.least_check(valence, i)
    }
}

/// vaderSentiment's `_but_check`, quirk included: each sentiment is found again by its value.
fn but_check(lower: &[String], sentiments: &mut [f64]) {
    let Some(bi) = lower.iter().position(|w| w == "but") else { return };
    for k in 0..sentiments.len() {
        let sentiment = sentiments[k];
        let si = sentiments.iter().position(|s| *s == sentiment).unwrap();
        if si < bi {
            sentiments[si] = sentiment * 0.5;
        } else if si > bi {
            sentiments[si] = sentiment * 1.5;
        }
    }
}

fn punctuation_emphasis(text: &str) -> f64 {
    let ep = text.matches('!').count().min(4) as f64 * 0.292;
    let qm_count = text.matches('?').count();
    let qm = if qm_count > 1 {
        if qm_count <= 3 {
            qm_count as f64 * 0.18
        } else {
            0.96
        }
    } else {
        0.0
    };
    ep + qm
}

fn score_valence(sentiments: &[f64], text: &str) -> Scores {
    if sentiments.is_empty() {
        return Scores { neg: 0.0, neu: 0.0, pos: 0.0, compound: 0.0 };
    }
    let mut sum_s = 0.0;
    for s in sentiments {
        sum_s += s;
    }
    let amplifier = punctuation_emphasis(text);
    if sum_s > 0.0 {
        sum_s += amplifier;
    } else if sum_s < 0.0 {
        sum_s -= amplifier;
    }
    let compound = normalize(sum_s);
    let (mut pos_sum, mut neg_sum, mut neu_count) = (0.0, 0.0, 0u32);
    for &s in sentiments {
        if s > 0.0 {
            pos_sum += s + 1.0;
        }
        if s < 0.0 {
            neg_sum += s - 1.0;
        }
        if s == 0.0 {
            neu_count += 1;
        }
    }
    if pos_sum > neg_sum.abs() {
        pos_sum += amplifier;
    } else if pos_sum < neg_sum.abs() {
        neg_sum -= amplifier;
    }
    let total = pos_sum + neg_sum.abs() + neu_count as f64;
    Scores {
        neg: round((neg_sum / total).abs(), 3),
        neu: round((neu_count as f64 / total).abs(), 3),
        pos: round((pos_sum / total).abs(), 3),
        compound: round(compound, 4),
    }
}

/// Emojis become their descriptions, separated from what precedes them by a space.
fn replace_emojis(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut prev_space = true;
    for c in text.chars() {
        if let Some(description) = emoji(c) {
            if !prev_space {
                out.push(' ');
            }
            out.push_str(description);
            prev_space = false;
        } else {
            out.push(c);
            prev_space = c == ' ';
        }
    }
    out
}

pub fn polarity_scores(text: &str) -> Scores {
    let replaced = replace_emojis(text);
    let text = replaced.trim();
    let words: Vec<&str> = text.split_whitespace().map(strip_punc_if_word).collect();
    let lower: Vec<String> = words.iter().map(|w| w.to_lowercase()).collect();
    let caps = words.iter().filter(|w| is_upper(w)).count();
    let is_cap_diff = caps > 0 && caps < words.len();
    let senti = Text { words, lower, is_cap_diff };
    let mut sentiments = Vec::with_capacity(senti.words.len());
    for (i, item) in senti.words.iter().enumerate() {
        let l = &senti.lower;
        if booster(&l[i]).is_some() || (i < l.len() - 1 && l[i] == "kind" && l[i + 1] == "of") {
            sentiments.push(0.0);
            continue;
        }
        sentiments.push(senti.sentiment_valence(item, i));
    }
    but_check(&senti.lower, &mut sentiments);
    score_valence(&sentiments, text)
}
