//! The pharmacy-claims table: its schema, the fixed catalogue (drugs, diagnoses, prescribers,
//! pharmacies, plans, states), the fill-date calendar, one claim as a pure function of
//! `(seed, row)`, and its CSV and Arrow encoders. Must not write files (the writer does).

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;

use chrono::{Datelike, NaiveDate};
use datafusion::arrow::array::{ArrayRef, Date32Array, Int32Array, Int64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;

use super::encode::{
    decimal_array, digit_array, fill_digits, push_fixed, push_u64, push_u64_padded, ShortCode,
    StringColumn,
};
use super::rng::{
    stream_key, RowRng, TieredPicker, WeightedPicker, DOMAIN_CLAIM_ROWS, DOMAIN_DIAGNOSES,
    DOMAIN_DRUGS, DOMAIN_MEMBERS, DOMAIN_PHARMACIES, DOMAIN_PLANS,
};
use super::writer::SyntheticTable;
use super::{invalid, GenError};

/// Files are `claims-00000.csv`, ...
pub(super) const FILE_STEM: &str = "claims";

/// Arrow schema of the claims table; column names and types are part of the interface.
pub(crate) fn claims_schema() -> SchemaRef {
    let string = |name: &str| Field::new(name, DataType::Utf8, false);
    let decimal = |name: &str, precision: u8, scale: i8| {
        Field::new(name, DataType::Decimal128(precision, scale), false)
    };
    Arc::new(Schema::new(vec![
        Field::new("claim_id", DataType::Int64, false),
        string("member_id"),
        Field::new("fill_date", DataType::Date32, false),
        string("ndc"),
        string("brand_generic"),
        string("diagnosis_code"),
        string("prescriber_npi"),
        string("pharmacy_npi"),
        string("plan_id"),
        string("member_state"),
        Field::new("days_supply", DataType::Int32, false),
        decimal("quantity", 10, 3),
        decimal("ingredient_cost", 12, 2),
        decimal("dispensing_fee", 8, 2),
        decimal("copay", 10, 2),
        decimal("plan_paid", 12, 2),
        decimal("total_cost", 12, 2),
    ]))
}

/// The catalogue does not depend on the seed (see the module docs); this is its fixed seed.
pub(super) const CATALOGUE_SEED: u64 = 0x5350_494C_4C57_4159; // "SPILLWAY"

pub(super) const DRUG_COUNT: usize = 25_000;
pub(super) const DIAGNOSIS_COUNT: usize = 15_000;
pub(super) const PRESCRIBER_COUNT: u64 = 200_000;
pub(super) const PHARMACY_COUNT: u64 = 60_000;
pub(super) const CONTRACT_COUNT: usize = 800;
pub(super) const PACKAGES_PER_CONTRACT: u64 = 6;
/// Members are about rows / 20 (3M members at 60M claims).
pub(super) const CLAIMS_PER_MEMBER: u64 = 20;
/// Member numbers are a bijection of 0..10^9 (9 digits); more members would repeat ids.
pub(super) const MAX_MEMBERS: u64 = 1_000_000_000;
/// Upper bound on one claim's ingredient cost ($500,000): keeps decimal(12,2) far from overflow.
pub(super) const MAX_INGREDIENT_CENTS: u64 = 50_000_000;

/// Member activity: 2% of members fill 15% of the claims, ..., 60% fill 20%.
pub(super) const MEMBER_TIERS: [(f64, u64); 4] = [(0.02, 15), (0.08, 25), (0.30, 40), (0.60, 20)];
/// Prescriber volume: a few high-volume practices, a long tail.
pub(super) const PRESCRIBER_TIERS: [(f64, u64); 4] =
    [(0.01, 10), (0.09, 35), (0.40, 45), (0.50, 10)];
/// Pharmacy volume: chains and mail order dominate.
pub(super) const PHARMACY_TIERS: [(f64, u64); 4] = [(0.02, 25), (0.13, 40), (0.35, 25), (0.50, 10)];
/// Plan enrolment: a few large contracts.
pub(super) const CONTRACT_TIERS: [(f64, u64); 4] = [(0.02, 30), (0.08, 30), (0.30, 30), (0.60, 10)];

/// The 50 states, DC and five territories, with populations (thousands, 2020 census): members
/// live where people live.
pub(super) const STATES: [(&str, u32); 56] = [
    ("AL", 5024),
    ("AK", 733),
    ("AZ", 7152),
    ("AR", 3012),
    ("CA", 39538),
    ("CO", 5774),
    ("CT", 3606),
    ("DE", 990),
    ("DC", 690),
    ("FL", 21538),
    ("GA", 10712),
    ("HI", 1455),
    ("ID", 1839),
    ("IL", 12813),
    ("IN", 6786),
    ("IA", 3190),
    ("KS", 2938),
    ("KY", 4506),
    ("LA", 4658),
    ("ME", 1362),
    ("MD", 6177),
    ("MA", 7030),
    ("MI", 10077),
    ("MN", 5706),
    ("MS", 2961),
    ("MO", 6155),
    ("MT", 1084),
    ("NE", 1962),
    ("NV", 3105),
    ("NH", 1378),
    ("NJ", 9289),
    ("NM", 2118),
    ("NY", 20201),
    ("NC", 10439),
    ("ND", 779),
    ("OH", 11799),
    ("OK", 3959),
    ("OR", 4237),
    ("PA", 13003),
    ("RI", 1097),
    ("SC", 5118),
    ("SD", 887),
    ("TN", 6911),
    ("TX", 29146),
    ("UT", 3272),
    ("VT", 643),
    ("VA", 8631),
    ("WA", 7705),
    ("WV", 1794),
    ("WI", 5894),
    ("WY", 577),
    ("PR", 3286),
    ("VI", 87),
    ("GU", 154),
    ("AS", 50),
    ("MP", 48),
];

/// Real labeler codes of large manufacturers and repackagers; many start with zeros.
pub(super) const KNOWN_LABELERS: [u64; 30] = [
    2, 9, 24, 25, 69, 78, 93, 143, 172, 378, 591, 603, 781, 904, 16714, 16729, 27241, 29300, 31722,
    33342, 43547, 50090, 51407, 59762, 60505, 62332, 65862, 68180, 68382, 69097,
];
pub(super) const LABELER_COUNT: usize = 400;
/// The most popular NDC: `00002-1433-80`.
pub(super) const TOP_NDC: u64 = 2_143_380;
/// Package codes (last two NDC digits) seen most often.
pub(super) const PACKAGE_CODES: [u64; 10] = [1, 1, 5, 10, 30, 60, 80, 82, 90, 20];

/// Very common ICD-10-CM codes take the top popularity ranks.
pub(super) const COMMON_DIAGNOSES: [&str; 24] = [
    "I10", "E11.9", "E78.5", "J45.909", "F32.9", "E03.9", "K21.9", "F41.1", "M54.50", "G47.00",
    "N39.0", "J06.9", "E66.9", "R05.9", "Z79.4", "F90.0", "I25.10", "J44.9", "M19.90", "G43.909",
    "E55.9", "L40.0", "F41.9", "E11.65",
];
/// ICD-10-CM chapters start with any letter but `U` (reserved).
pub(super) const ICD_LETTERS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTVWXYZ";

/// Drugs by popularity rank: NDC, brand flag and typical ingredient cost of a 30-day supply.
pub(super) struct Drugs {
    ndc: Vec<[u8; 11]>,
    brand: Vec<bool>,
    median_cents_per_30_days: Vec<f64>,
    popularity: WeightedPicker,
}

impl Drugs {
    pub(super) fn new() -> Self {
        let key = stream_key(CATALOGUE_SEED, DOMAIN_DRUGS);
        let labelers = labeler_codes(key);
        let labeler_popularity = WeightedPicker::zipf(labelers.len(), 2.0, 1.0);
        let mut seen = HashSet::with_capacity(DRUG_COUNT);
        let mut drugs = Drugs {
            ndc: Vec::with_capacity(DRUG_COUNT),
            brand: Vec::with_capacity(DRUG_COUNT),
            median_cents_per_30_days: Vec::with_capacity(DRUG_COUNT),
            popularity: WeightedPicker::zipf(DRUG_COUNT, 5.0, 1.05),
        };
        let mut attempt = 0;
        while drugs.brand.len() < DRUG_COUNT {
            let mut rng = RowRng::new(key, attempt);
            attempt += 1;
            let rank = drugs.brand.len();
            let ndc = if rank == 0 {
                TOP_NDC
            } else {
                let labeler = labelers[labeler_popularity.pick(&mut rng)];
                let product = rng.below(10_000);
                let package = PACKAGE_CODES[rng.below(PACKAGE_CODES.len() as u64) as usize];
                labeler * 1_000_000 + product * 100 + package
            };
            if !seen.insert(ndc) {
                continue;
            }
            drugs.ndc.push(digit_array(ndc));
            // Dulaglutide (the top NDC) is a brand; elsewhere brands are rare, so that about 90%
            // of claims are generics, as in real US pharmacy data.
            let brand = rank == 0 || rng.below(1000) < 70;
            let (median, spread) = if brand {
                (40_000.0, 0.8)
            } else {
                (1_200.0, 1.0)
            };
            drugs.brand.push(brand);
            drugs
                .median_cents_per_30_days
                .push(median * (spread * rng.standard_normal()).exp());
        }
        drugs
    }

    /// Ingredient cost of one fill: log-normal around the drug's typical cost, scaled by supply.
    pub(super) fn claim_cost_cents(&self, drug: usize, days_supply: u32, rng: &mut RowRng) -> u64 {
        let supply = (days_supply as f64 / 30.0).max(0.1);
        let cents =
            self.median_cents_per_30_days[drug] * supply * (0.3 * rng.standard_normal()).exp();
        (cents.round() as u64).clamp(1, MAX_INGREDIENT_CENTS)
    }
}

/// Five-digit labeler codes: the known ones, then random ones of which about 40% start with 0.
pub(super) fn labeler_codes(key: u64) -> Vec<u64> {
    let mut codes: Vec<u64> = KNOWN_LABELERS.to_vec();
    let mut seen: HashSet<u64> = codes.iter().copied().collect();
    let mut rng = RowRng::new(key, u64::MAX);
    while codes.len() < LABELER_COUNT {
        let code = if rng.below(100) < 40 {
            1 + rng.below(9_999)
        } else {
            10_000 + rng.below(90_000)
        };
        if seen.insert(code) {
            codes.push(code);
        }
    }
    codes
}

/// ICD-10-CM-shaped diagnosis codes by popularity rank.
pub(super) struct Diagnoses {
    code: Vec<ShortCode>,
    popularity: WeightedPicker,
}

impl Diagnoses {
    pub(super) fn new() -> Self {
        let key = stream_key(CATALOGUE_SEED, DOMAIN_DIAGNOSES);
        let mut code = Vec::with_capacity(DIAGNOSIS_COUNT);
        let mut seen: HashSet<Vec<u8>> = HashSet::with_capacity(DIAGNOSIS_COUNT);
        let common = COMMON_DIAGNOSES.iter().map(|text| text.as_bytes().to_vec());
        let generated = (0..).map(|attempt| random_icd10(&mut RowRng::new(key, attempt)));
        for text in common.chain(generated) {
            if code.len() == DIAGNOSIS_COUNT {
                break;
            }
            // Every code is at most 8 bytes by construction, so `ShortCode::new` never declines.
            let Some(short) = ShortCode::new(&text) else {
                continue;
            };
            if seen.insert(text) {
                code.push(short);
            }
        }
        Diagnoses {
            code,
            popularity: WeightedPicker::zipf(DIAGNOSIS_COUNT, 3.0, 1.0),
        }
    }
}

/// A code shaped like ICD-10-CM: letter, two digits, then optionally `.` and 1..4 characters
/// (`I10`, `E11.9`, `J45.909`, `S72.001A`).
pub(super) fn random_icd10(rng: &mut RowRng) -> Vec<u8> {
    let mut text = Vec::with_capacity(8);
    let letter = ICD_LETTERS[rng.below(ICD_LETTERS.len() as u64) as usize];
    text.push(letter);
    push_u64_padded(&mut text, rng.below(100), 2);
    let subcode_length = match rng.below(100) {
        0..=14 => 0,
        15..=49 => 1,
        50..=74 => 2,
        75..=92 => 3,
        _ => 4,
    };
    if subcode_length > 0 {
        text.push(b'.');
        for _ in 0..subcode_length.min(3) {
            text.push(b'0' + rng.below(10) as u8);
        }
        if subcode_length == 4 {
            // The seventh character: an encounter letter for injuries, a digit elsewhere.
            let seventh = if matches!(letter, b'S' | b'T') {
                b"ADS"[rng.below(3) as usize]
            } else {
                b'0' + rng.below(10) as u8
            };
            text.push(seventh);
        }
    }
    text
}

/// The NPI check digit: Luhn over `80840` + the 9-digit base (24 accounts for the prefix).
pub(super) fn npi_check_digit(base: u64) -> u64 {
    let mut sum = 24;
    let mut rest = base;
    for position in 0..9 {
        let digit = rest % 10;
        rest /= 10;
        // The base's rightmost digit and every second one to its left are doubled.
        sum += if position % 2 == 0 {
            let doubled = digit * 2;
            doubled / 10 + doubled % 10
        } else {
            digit
        };
    }
    (10 - sum % 10) % 10
}

/// Valid-looking NPIs: `1`, 8 digits from a bijective scramble of the index (offset by `block`
/// so prescribers and pharmacies never share a number), and the check digit.
pub(super) fn npi_table(count: u64, block: u64, multiplier: u64, increment: u64) -> Vec<[u8; 10]> {
    (0..count)
        .map(|index| {
            let body = block + (index * multiplier + increment) % 50_000_000;
            let base = 100_000_000 + body;
            digit_array(base * 10 + npi_check_digit(base))
        })
        .collect()
}

/// Per-plan copays: a flat copay per tier, and a share of fills under coinsurance instead.
pub(super) struct PlanBenefit {
    generic_copay_cents: u64,
    brand_copay_cents: u64,
    coinsurance_percent: u64,
    coinsurance_share_percent: u64,
}

/// Plan ids (`H1234-001`: contract + benefit package) and their benefits.
pub(super) struct Plans {
    id: Vec<[u8; 9]>,
    benefit: Vec<PlanBenefit>,
}

impl Plans {
    pub(super) fn new() -> Self {
        let key = stream_key(CATALOGUE_SEED, DOMAIN_PLANS);
        let mut seen = HashSet::with_capacity(CONTRACT_COUNT);
        let mut plans = Plans {
            id: Vec::with_capacity(CONTRACT_COUNT * PACKAGES_PER_CONTRACT as usize),
            benefit: Vec::new(),
        };
        let mut attempt = 0;
        while seen.len() < CONTRACT_COUNT {
            let mut rng = RowRng::new(key, attempt);
            attempt += 1;
            // H: Medicare Advantage, S: stand-alone drug plans, R: regional PPOs.
            let letter = match rng.below(100) {
                0..=74 => b'H',
                75..=94 => b'S',
                _ => b'R',
            };
            let number = rng.below(10_000);
            if !seen.insert((letter, number)) {
                continue;
            }
            for package in 1..=PACKAGES_PER_CONTRACT {
                let mut id = *b"H0000-000";
                id[0] = letter;
                fill_digits(&mut id[1..5], number);
                fill_digits(&mut id[6..], package);
                plans.id.push(id);
                plans.benefit.push(random_benefit(&mut rng));
            }
        }
        plans
    }
}

pub(super) fn random_benefit(rng: &mut RowRng) -> PlanBenefit {
    const GENERIC: [u64; 5] = [0, 300, 500, 1_000, 1_500];
    const BRAND: [u64; 5] = [2_500, 3_500, 4_700, 5_000, 10_000];
    const COINSURANCE: [u64; 3] = [20, 25, 33];
    PlanBenefit {
        generic_copay_cents: GENERIC[rng.below(5) as usize],
        brand_copay_cents: BRAND[rng.below(5) as usize],
        coinsurance_percent: COINSURANCE[rng.below(3) as usize],
        coinsurance_share_percent: 5 + rng.below(20),
    }
}

/// Everything about the claims world that does not change from claim to claim.
pub(super) struct Catalogue {
    drugs: Drugs,
    diagnoses: Diagnoses,
    prescriber_npi: Vec<[u8; 10]>,
    prescriber_popularity: TieredPicker,
    pharmacy_npi: Vec<[u8; 10]>,
    pharmacy_popularity: TieredPicker,
    /// Dispensing fee of each pharmacy (a property of the pharmacy, 0..=15.00).
    pharmacy_fee_cents: Vec<u64>,
    plans: Plans,
    contract_popularity: TieredPicker,
    state_population: WeightedPicker,
}

impl Catalogue {
    pub(super) fn new() -> Self {
        let fee_key = stream_key(CATALOGUE_SEED, DOMAIN_PHARMACIES);
        let pharmacy_fee_cents = (0..PHARMACY_COUNT)
            .map(|pharmacy| {
                let u = RowRng::new(fee_key, pharmacy).unit();
                // Skewed low: most pharmacies charge a dollar or two, a few up to $15.
                (1_500.0 * u * u).round() as u64
            })
            .collect();
        Catalogue {
            drugs: Drugs::new(),
            diagnoses: Diagnoses::new(),
            prescriber_npi: npi_table(PRESCRIBER_COUNT, 0, 14_348_907, 7_919_113),
            prescriber_popularity: TieredPicker::new(PRESCRIBER_COUNT, PRESCRIBER_TIERS),
            pharmacy_npi: npi_table(PHARMACY_COUNT, 50_000_000, 1_594_323, 31_337_017),
            pharmacy_popularity: TieredPicker::new(PHARMACY_COUNT, PHARMACY_TIERS),
            pharmacy_fee_cents,
            plans: Plans::new(),
            contract_popularity: TieredPicker::new(CONTRACT_COUNT as u64, CONTRACT_TIERS),
            state_population: WeightedPicker::new(STATES.iter().map(|&(_, p)| p as f64)),
        }
    }
}

/// Fill dates: the days of the range with weekday weights (pharmacies are quieter at weekends).
pub(super) struct Calendar {
    /// Running totals of the day weights.
    cumulative_weight: Vec<u64>,
    /// Days since 1970-01-01 (Arrow's Date32).
    epoch_days: Vec<i32>,
    /// `YYYY-MM-DD` of each day.
    text: Vec<[u8; 10]>,
}

/// Relative fill volume Monday..Sunday.
pub(super) const WEEKDAY_WEIGHTS: [u64; 7] = [100, 100, 100, 100, 105, 55, 25];
/// A century of days is plenty and keeps the calendar table small.
pub(super) const MAX_DAYS: u32 = 36_525;

impl Calendar {
    pub(super) fn new(start: NaiveDate, days: u32) -> Result<Self, GenError> {
        if days == 0 || days > MAX_DAYS {
            return Err(invalid("days", format!("must be in 1..={MAX_DAYS}")));
        }
        let unix_epoch_ce = 719_163; // days from 0001-01-01 (CE day 1) to 1970-01-01
        let mut calendar = Calendar {
            cumulative_weight: Vec::with_capacity(days as usize),
            epoch_days: Vec::with_capacity(days as usize),
            text: Vec::with_capacity(days as usize),
        };
        let mut total = 0;
        for date in start.iter_days().take(days as usize) {
            // Four-digit years keep `YYYY-MM-DD` (and CSV parsing) unambiguous.
            if !(1..=9999).contains(&date.year()) {
                let reason = format!("fill dates must stay within years 1..=9999, {date} is not");
                return Err(invalid("start", reason));
            }
            total += WEEKDAY_WEIGHTS[date.weekday().num_days_from_monday() as usize];
            calendar.cumulative_weight.push(total);
            calendar
                .epoch_days
                .push(date.num_days_from_ce() - unix_epoch_ce);
            let mut text = *b"0000-00-00";
            fill_digits(&mut text[0..4], date.year() as u64);
            fill_digits(&mut text[5..7], date.month() as u64);
            fill_digits(&mut text[8..10], date.day() as u64);
            calendar.text.push(text);
        }
        Ok(calendar)
    }

    pub(super) fn pick(&self, rng: &mut RowRng) -> usize {
        let total = self.cumulative_weight.last().copied().unwrap_or(1);
        let r = rng.below(total);
        self.cumulative_weight.partition_point(|&c| c <= r)
    }
}

/// The attributes of a member, which every claim of that member shares.
pub(super) struct Member {
    /// The 9 digits of `member_id`.
    number: u64,
    state: usize,
    plan: usize,
    /// Members mostly fill at their usual pharmacy.
    home_pharmacy: usize,
}

/// One generated claim: numbers and catalogue indices; the encoders turn it into text or arrays.
/// Money is integer cents, so `total = ingredient + fee` and `plan_paid = total - copay` hold
/// exactly.
pub(super) struct Claim {
    claim_id: u64,
    member: Member,
    fill_day: usize,
    drug: usize,
    diagnosis: usize,
    prescriber: usize,
    pharmacy: usize,
    days_supply: u32,
    quantity_thousandths: u64,
    ingredient_cents: u64,
    fee_cents: u64,
    copay_cents: u64,
}

impl Claim {
    pub(super) fn total_cents(&self) -> u64 {
        self.ingredient_cents + self.fee_cents
    }

    pub(super) fn plan_paid_cents(&self) -> u64 {
        // copay is capped at the total when generated, so this cannot underflow.
        self.total_cents() - self.copay_cents
    }
}

/// The claims table of one run: the catalogue plus the seed-dependent row streams.
pub(super) struct ClaimsTable {
    catalogue: Catalogue,
    calendar: Calendar,
    row_key: u64,
    member_key: u64,
    member_activity: TieredPicker,
    schema: SchemaRef,
}

impl ClaimsTable {
    pub(super) fn new(seed: u64, rows: u64, calendar: Calendar) -> Self {
        let member_count = (rows / CLAIMS_PER_MEMBER).clamp(1, MAX_MEMBERS);
        ClaimsTable {
            catalogue: Catalogue::new(),
            calendar,
            row_key: stream_key(seed, DOMAIN_CLAIM_ROWS),
            member_key: stream_key(CATALOGUE_SEED, DOMAIN_MEMBERS),
            member_activity: TieredPicker::new(member_count, MEMBER_TIERS),
            schema: claims_schema(),
        }
    }

    /// Member `index`'s attributes, from the member's own stream (the same in every claim).
    pub(super) fn member(&self, index: u64) -> Member {
        let catalogue = &self.catalogue;
        let mut rng = RowRng::new(self.member_key, index);
        let contract = catalogue.contract_popularity.pick(&mut rng);
        let package = rng.below(PACKAGES_PER_CONTRACT);
        Member {
            // An affine map with a multiplier coprime to 10^9 is a bijection: unique ids, but
            // heavy members are not simply the smallest numbers.
            number: (index * 387_420_489 + 123_456_789) % MAX_MEMBERS,
            state: catalogue.state_population.pick(&mut rng),
            plan: (contract * PACKAGES_PER_CONTRACT + package) as usize,
            home_pharmacy: catalogue.pharmacy_popularity.pick(&mut rng) as usize,
        }
    }

    /// Claim number `row` (0-based): a pure function of the seed and `row`.
    pub(super) fn claim(&self, row: u64) -> Claim {
        let catalogue = &self.catalogue;
        let mut rng = RowRng::new(self.row_key, row);
        let member = self.member(self.member_activity.pick(&mut rng));
        let drug = catalogue.drugs.popularity.pick(&mut rng);
        let days_supply = pick_days_supply(&mut rng);
        let pharmacy = if rng.below(100) < 80 {
            member.home_pharmacy
        } else {
            catalogue.pharmacy_popularity.pick(&mut rng) as usize
        };
        let ingredient_cents = catalogue
            .drugs
            .claim_cost_cents(drug, days_supply, &mut rng);
        let fee_cents = catalogue.pharmacy_fee_cents[pharmacy];
        let benefit = &catalogue.plans.benefit[member.plan];
        let copay_cents = pick_copay_cents(
            benefit,
            catalogue.drugs.brand[drug],
            ingredient_cents + fee_cents,
            &mut rng,
        );
        Claim {
            claim_id: row + 1,
            fill_day: self.calendar.pick(&mut rng),
            drug,
            diagnosis: catalogue.diagnoses.popularity.pick(&mut rng),
            prescriber: catalogue.prescriber_popularity.pick(&mut rng) as usize,
            pharmacy,
            days_supply,
            quantity_thousandths: pick_quantity_thousandths(days_supply, &mut rng),
            ingredient_cents,
            fee_cents,
            copay_cents,
            member,
        }
    }

    /// Appends one claim as a CSV line (column order of [`claims_schema`]).
    pub(super) fn push_csv(&self, claim: &Claim, out: &mut Vec<u8>) {
        let catalogue = &self.catalogue;
        push_u64(out, claim.claim_id);
        out.extend_from_slice(b",M");
        push_u64_padded(out, claim.member.number, 9);
        out.push(b',');
        out.extend_from_slice(&self.calendar.text[claim.fill_day]);
        out.push(b',');
        out.extend_from_slice(&catalogue.drugs.ndc[claim.drug]);
        out.extend_from_slice(brand_generic(catalogue.drugs.brand[claim.drug]));
        catalogue.diagnoses.code[claim.diagnosis].push_to(out);
        out.push(b',');
        out.extend_from_slice(&catalogue.prescriber_npi[claim.prescriber]);
        out.push(b',');
        out.extend_from_slice(&catalogue.pharmacy_npi[claim.pharmacy]);
        out.push(b',');
        out.extend_from_slice(&catalogue.plans.id[claim.member.plan]);
        out.push(b',');
        out.extend_from_slice(STATES[claim.member.state].0.as_bytes());
        out.push(b',');
        push_u64(out, claim.days_supply as u64);
        out.push(b',');
        push_fixed(out, claim.quantity_thousandths, 3);
        for cents in [
            claim.ingredient_cents,
            claim.fee_cents,
            claim.copay_cents,
            claim.plan_paid_cents(),
            claim.total_cents(),
        ] {
            out.push(b',');
            push_fixed(out, cents, 2);
        }
        out.push(b'\n');
    }
}

/// The `brand_generic` value with the commas around it (saves two pushes on the hot path).
pub(super) fn brand_generic(brand: bool) -> &'static [u8] {
    if brand {
        b",B,"
    } else {
        b",G,"
    }
}

/// Mostly 30 days, some 90 (maintenance drugs, mail order), the rest anywhere in 1..=365.
pub(super) fn pick_days_supply(rng: &mut RowRng) -> u32 {
    match rng.below(100) {
        0..=67 => 30,
        68..=85 => 90,
        _ => 1 + rng.below(365) as u32,
    }
}

/// Quantity in thousandths of a unit, 1..=1000 units, skewed to small counts: mostly tablets
/// (whole or half, per day of supply), sometimes a measured amount (liquids, creams).
pub(super) fn pick_quantity_thousandths(days_supply: u32, rng: &mut RowRng) -> u64 {
    const TABLETS_PER_DAY: [u64; 8] = [1, 1, 1, 1, 2, 2, 3, 4];
    let thousandths = match rng.below(100) {
        0..=69 => days_supply as u64 * 1_000 * TABLETS_PER_DAY[rng.below(8) as usize],
        70..=79 => days_supply as u64 * 500,
        _ => {
            let u = rng.unit();
            1_000 + (999_000.0 * u * u * u) as u64
        }
    };
    thousandths.clamp(1_000, 1_000_000)
}

/// The member's share of a fill under the plan's benefit, never more than the total.
pub(super) fn pick_copay_cents(
    benefit: &PlanBenefit,
    brand: bool,
    total: u64,
    rng: &mut RowRng,
) -> u64 {
    let copay = if rng.below(100) < benefit.coinsurance_share_percent {
        total * benefit.coinsurance_percent / 100
    } else if brand {
        benefit.brand_copay_cents
    } else {
        benefit.generic_copay_cents
    };
    copay.min(total)
}

/// Column vectors for one Arrow batch of claims.
pub(super) struct ClaimColumns {
    claim_id: Vec<i64>,
    member_id: StringColumn,
    fill_date: Vec<i32>,
    ndc: StringColumn,
    brand_generic: StringColumn,
    diagnosis_code: StringColumn,
    prescriber_npi: StringColumn,
    pharmacy_npi: StringColumn,
    plan_id: StringColumn,
    member_state: StringColumn,
    days_supply: Vec<i32>,
    quantity: Vec<i128>,
    ingredient_cost: Vec<i128>,
    dispensing_fee: Vec<i128>,
    copay: Vec<i128>,
    plan_paid: Vec<i128>,
    total_cost: Vec<i128>,
}

impl ClaimColumns {
    pub(super) fn with_capacity(rows: usize) -> Self {
        ClaimColumns {
            claim_id: Vec::with_capacity(rows),
            member_id: StringColumn::with_capacity(rows, 10),
            fill_date: Vec::with_capacity(rows),
            ndc: StringColumn::with_capacity(rows, 11),
            brand_generic: StringColumn::with_capacity(rows, 1),
            diagnosis_code: StringColumn::with_capacity(rows, 8),
            prescriber_npi: StringColumn::with_capacity(rows, 10),
            pharmacy_npi: StringColumn::with_capacity(rows, 10),
            plan_id: StringColumn::with_capacity(rows, 9),
            member_state: StringColumn::with_capacity(rows, 2),
            days_supply: Vec::with_capacity(rows),
            quantity: Vec::with_capacity(rows),
            ingredient_cost: Vec::with_capacity(rows),
            dispensing_fee: Vec::with_capacity(rows),
            copay: Vec::with_capacity(rows),
            plan_paid: Vec::with_capacity(rows),
            total_cost: Vec::with_capacity(rows),
        }
    }

    pub(super) fn push(&mut self, table: &ClaimsTable, claim: &Claim) {
        let catalogue = &table.catalogue;
        // claim ids are at most rows <= i64::MAX (validated).
        self.claim_id.push(claim.claim_id as i64);
        self.member_id.values.push(b'M');
        push_u64_padded(&mut self.member_id.values, claim.member.number, 9);
        self.member_id.end_value();
        self.fill_date
            .push(table.calendar.epoch_days[claim.fill_day]);
        self.ndc.push(&catalogue.drugs.ndc[claim.drug]);
        let brand = catalogue.drugs.brand[claim.drug];
        self.brand_generic.push(if brand { b"B" } else { b"G" });
        self.diagnosis_code
            .push_code(&catalogue.diagnoses.code[claim.diagnosis]);
        self.prescriber_npi
            .push(&catalogue.prescriber_npi[claim.prescriber]);
        self.pharmacy_npi
            .push(&catalogue.pharmacy_npi[claim.pharmacy]);
        self.plan_id.push(&catalogue.plans.id[claim.member.plan]);
        self.member_state
            .push(STATES[claim.member.state].0.as_bytes());
        self.days_supply.push(claim.days_supply as i32);
        self.quantity.push(claim.quantity_thousandths as i128);
        self.ingredient_cost.push(claim.ingredient_cents as i128);
        self.dispensing_fee.push(claim.fee_cents as i128);
        self.copay.push(claim.copay_cents as i128);
        self.plan_paid.push(claim.plan_paid_cents() as i128);
        self.total_cost.push(claim.total_cents() as i128);
    }

    pub(super) fn finish(self, schema: SchemaRef) -> Result<RecordBatch, ArrowError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(self.claim_id)),
            self.member_id.finish()?,
            Arc::new(Date32Array::from(self.fill_date)),
            self.ndc.finish()?,
            self.brand_generic.finish()?,
            self.diagnosis_code.finish()?,
            self.prescriber_npi.finish()?,
            self.pharmacy_npi.finish()?,
            self.plan_id.finish()?,
            self.member_state.finish()?,
            Arc::new(Int32Array::from(self.days_supply)),
            decimal_array(self.quantity, 10, 3)?,
            decimal_array(self.ingredient_cost, 12, 2)?,
            decimal_array(self.dispensing_fee, 8, 2)?,
            decimal_array(self.copay, 10, 2)?,
            decimal_array(self.plan_paid, 12, 2)?,
            decimal_array(self.total_cost, 12, 2)?,
        ];
        RecordBatch::try_new(schema, columns)
    }
}

impl SyntheticTable for ClaimsTable {
    fn file_stem(&self) -> &'static str {
        FILE_STEM
    }

    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn write_csv_rows(&self, rows: Range<u64>, out: &mut Vec<u8>) {
        for row in rows {
            self.push_csv(&self.claim(row), out);
        }
    }

    fn build_batch(&self, rows: Range<u64>) -> Result<RecordBatch, ArrowError> {
        let mut columns = ClaimColumns::with_capacity((rows.end - rows.start) as usize);
        for row in rows {
            columns.push(self, &self.claim(row));
        }
        columns.finish(self.schema())
    }

    fn high_cardinality_columns(&self) -> &'static [&'static str] {
        &["claim_id", "ingredient_cost", "plan_paid", "total_cost"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::tests::{claims_options, ints, no_progress, read_csv, read_parquet, strings};
    use crate::gen::writer::BATCH_ROWS;
    use crate::gen::{generate_claims, GenFormat};
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::Date32Type;
    use std::fs;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn npi_check_digit_matches_cms_example() {
        // CMS's worked example: 123456789 -> check digit 3 (NPI 1234567893).
        assert_eq!(npi_check_digit(123_456_789), 3);
        // And an independent Luhn check over the 15-digit `80840` form of generated NPIs.
        for base in [100_000_000u64, 149_999_999, 150_000_123, 187_654_321] {
            let npi = base * 10 + npi_check_digit(base);
            let full = format!("80840{npi}");
            let sum: u32 = full
                .bytes()
                .rev()
                .enumerate()
                .map(|(i, b)| {
                    let d = (b - b'0') as u32;
                    if i % 2 == 1 {
                        if d * 2 > 9 {
                            d * 2 - 9
                        } else {
                            d * 2
                        }
                    } else {
                        d
                    }
                })
                .sum();
            assert_eq!(sum % 10, 0, "{full} fails Luhn");
        }
    }

    #[test]
    fn claims_csv_reads_back_with_the_schema_and_holds_the_invariants() {
        let dir = tempfile::tempdir().unwrap();
        let rows = 20_000;
        let reported = AtomicU64::new(0);
        let progress = |n: u64| {
            reported.fetch_add(n, Ordering::Relaxed);
        };
        let summary = generate_claims(
            &claims_options(dir.path(), rows, 4, GenFormat::Csv),
            &progress,
        )
        .unwrap();
        assert_eq!(summary.rows, rows);
        assert_eq!(reported.load(Ordering::Relaxed), rows);
        let on_disk: u64 = summary
            .files
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum();
        assert_eq!(summary.bytes, on_disk);
        // No temporary files left behind.
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        let batch = read_csv(&summary, claims_schema());
        assert_eq!(batch.num_rows() as u64, rows);

        let claim_ids = ints(&batch, "claim_id");
        assert_eq!(claim_ids, (1..=rows as i64).collect::<Vec<_>>());

        // Money identities, on every row, in integer cents.
        let ingredient = ints(&batch, "ingredient_cost");
        let fee = ints(&batch, "dispensing_fee");
        let copay = ints(&batch, "copay");
        let plan_paid = ints(&batch, "plan_paid");
        let total = ints(&batch, "total_cost");
        for i in 0..batch.num_rows() {
            assert_eq!(total[i], ingredient[i] + fee[i], "row {i}");
            assert_eq!(plan_paid[i], total[i] - copay[i], "row {i}");
            assert!(copay[i] >= 0 && copay[i] <= total[i], "row {i}");
            assert!(ingredient[i] > 0, "row {i}");
            assert!((0..=1_500).contains(&fee[i]), "row {i}");
        }
        for quantity in ints(&batch, "quantity") {
            assert!((1_000..=1_000_000).contains(&quantity), "{quantity}");
        }
        let days_supply = ints(&batch, "days_supply");
        assert!(days_supply.iter().all(|d| (1..=365).contains(d)));
        let thirty = days_supply.iter().filter(|&&d| d == 30).count();
        let ninety = days_supply.iter().filter(|&&d| d == 90).count();
        assert!(
            thirty > rows as usize / 2 && ninety > rows as usize / 10,
            "{thirty} {ninety}"
        );

        // fill_date within start .. start + days.
        let start = NaiveDate::from_ymd_opt(2024, 1, 1).unwrap();
        let first_day = (start - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()).num_days() as i32;
        let dates = batch
            .column_by_name("fill_date")
            .unwrap()
            .as_primitive::<Date32Type>();
        assert!(dates
            .values()
            .iter()
            .all(|&d| d >= first_day && d < first_day + 366));
        // Weekends are rarer: 2024-01-06 is a Saturday, 2024-01-07 a Sunday.
        let weekday_of = |d: i32| (d - first_day + 0) % 7; // 0 = Monday (2024-01-01 is a Monday)
        let weekday_count = dates
            .values()
            .iter()
            .filter(|&&d| weekday_of(d) < 5)
            .count() as f64
            / 5.0;
        let sunday_count = dates
            .values()
            .iter()
            .filter(|&&d| weekday_of(d) == 6)
            .count() as f64;
        assert!(
            sunday_count < weekday_count * 0.5,
            "{sunday_count} vs {weekday_count}"
        );

        // Shapes of the string columns.
        let is_digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
        let ndc = strings(&batch, "ndc");
        assert!(ndc.iter().all(|s| is_digits(s, 11)));
        let leading_zero = ndc.iter().filter(|s| s.starts_with('0')).count();
        assert!(leading_zero > ndc.len() / 10, "{leading_zero}");
        assert!(ndc.iter().any(|s| s == "00002143380"));
        let most_common = ndc
            .iter()
            .fold(std::collections::HashMap::new(), |mut counts, s| {
                *counts.entry(s.as_str()).or_insert(0) += 1;
                counts
            });
        let top = most_common.iter().max_by_key(|(_, c)| **c).unwrap();
        assert_eq!(*top.0, "00002143380");

        let members = strings(&batch, "member_id");
        assert!(members
            .iter()
            .all(|s| s.starts_with('M') && is_digits(&s[1..], 9)));
        let distinct_members: HashSet<_> = members.iter().collect();
        let expected_members = rows / CLAIMS_PER_MEMBER;
        assert!(
            distinct_members.len() as u64 > expected_members * 9 / 10,
            "{}",
            distinct_members.len()
        );
        assert!(distinct_members.len() as u64 <= expected_members);

        let brand = strings(&batch, "brand_generic");
        let generic_share = brand.iter().filter(|s| *s == "G").count() as f64 / rows as f64;
        assert!(brand.iter().all(|s| s == "B" || s == "G"));
        assert!((0.85..0.95).contains(&generic_share), "{generic_share}");

        for code in strings(&batch, "diagnosis_code") {
            let b = code.as_bytes();
            let shaped = b[0].is_ascii_uppercase()
                && b[1].is_ascii_digit()
                && b[2].is_ascii_digit()
                && (b.len() == 3
                    || (b[3] == b'.'
                        && (5..=8).contains(&b.len())
                        && b[4..].iter().all(|c| c.is_ascii_alphanumeric())));
            assert!(shaped, "{code}");
        }
        for npi in strings(&batch, "prescriber_npi")
            .iter()
            .chain(&strings(&batch, "pharmacy_npi"))
        {
            assert!(is_digits(npi, 10), "{npi}");
            let base: u64 = npi[..9].parse().unwrap();
            assert_eq!(
                npi_check_digit(base),
                (npi.as_bytes()[9] - b'0') as u64,
                "{npi}"
            );
        }
        for plan in strings(&batch, "plan_id") {
            let b = plan.as_bytes();
            assert!(
                b.len() == 9 && b[0].is_ascii_uppercase() && b[5] == b'-',
                "{plan}"
            );
            assert!(
                b[1..5].iter().chain(&b[6..]).all(u8::is_ascii_digit),
                "{plan}"
            );
            assert!(
                (1..=6).contains(&plan[6..].parse::<u32>().unwrap()),
                "{plan}"
            );
        }
        let states: HashSet<String> = STATES.iter().map(|(code, _)| code.to_string()).collect();
        assert_eq!(states.len(), 56);
        // member_state and plan_id are properties of the member.
        let member_state = strings(&batch, "member_state");
        let plan_id = strings(&batch, "plan_id");
        let mut member_attributes = std::collections::HashMap::new();
        for i in 0..batch.num_rows() {
            assert!(states.contains(&member_state[i]), "{}", member_state[i]);
            let attributes = (member_state[i].clone(), plan_id[i].clone());
            let previous = member_attributes
                .entry(members[i].clone())
                .or_insert_with(|| attributes.clone());
            assert_eq!(*previous, attributes, "member {}", members[i]);
        }
        // brand_generic is a property of the drug.
        let mut drug_brand = std::collections::HashMap::new();
        for (code, flag) in ndc.iter().zip(&brand) {
            assert_eq!(drug_brand.entry(code).or_insert(flag), &flag, "{code}");
        }
    }

    #[test]
    fn csv_text_formats() {
        let dir = tempfile::tempdir().unwrap();
        let summary = generate_claims(
            &claims_options(dir.path(), 50, 1, GenFormat::Csv),
            &no_progress,
        )
        .unwrap();
        let text = String::from_utf8(fs::read(&summary.files[0]).unwrap()).unwrap();
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap(),
            "claim_id,member_id,fill_date,ndc,brand_generic,diagnosis_code,prescriber_npi,pharmacy_npi,plan_id,member_state,days_supply,quantity,ingredient_cost,dispensing_fee,copay,plan_paid,total_cost"
        );
        for line in lines {
            let fields: Vec<&str> = line.split(',').collect();
            assert_eq!(fields.len(), 17, "{line}");
            assert!(
                NaiveDate::parse_from_str(fields[2], "%Y-%m-%d").is_ok(),
                "{line}"
            );
            let decimals = |field: &str| field.split_once('.').map(|(_, f)| f.len());
            assert_eq!(decimals(fields[11]), Some(3), "{line}");
            for money in &fields[12..] {
                assert_eq!(decimals(money), Some(2), "{line}");
            }
        }
    }

    #[test]
    fn parquet_holds_the_same_rows_as_csv() {
        let csv_dir = tempfile::tempdir().unwrap();
        let parquet_dir = tempfile::tempdir().unwrap();
        // More than one batch per file, so batch boundaries are exercised too.
        let rows = 2 * BATCH_ROWS + 123;
        let csv = generate_claims(
            &claims_options(csv_dir.path(), rows, 2, GenFormat::Csv),
            &no_progress,
        )
        .unwrap();
        let parquet = generate_claims(
            &claims_options(parquet_dir.path(), rows, 2, GenFormat::Parquet),
            &no_progress,
        )
        .unwrap();
        assert_eq!(
            parquet.files[0].file_name().unwrap(),
            "claims-00000.parquet"
        );
        let from_csv = read_csv(&csv, claims_schema());
        let from_parquet = read_parquet(&parquet, claims_schema());
        assert_eq!(from_parquet.schema().fields(), claims_schema().fields());
        assert_eq!(from_csv.num_rows() as u64, rows);
        for (i, field) in claims_schema().fields().iter().enumerate() {
            assert_eq!(
                from_csv.column(i).to_data(),
                from_parquet.column(i).to_data(),
                "{}",
                field.name()
            );
        }
    }
}
