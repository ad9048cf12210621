//! ECDSA P-256 rates of ring and aws-lc-rs on this machine, single thread:
//! key generation, signing, verification. The figures behind the choice of
//! crypto backend in docs/ARCHITECTURE.md.

use std::time::{Duration, Instant};

const RUN: Duration = Duration::from_secs(2);

fn rate(mut op: impl FnMut()) -> f64 {
    for _ in 0..200 {
        op();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < RUN {
        for _ in 0..100 {
            op();
        }
        n += 100;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

macro_rules! backend {
    ($name:literal, $m:ident, $load:expr) => {{
        use $m::rand::SystemRandom;
        use $m::signature::{self, EcdsaKeyPair, KeyPair};
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_ASN1_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let key = $load(alg, pkcs8.as_ref(), &rng);
        let msg = [7u8; 512];
        let sig = key.sign(&rng, &msg).unwrap();
        let public = signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, key.public_key().as_ref().to_vec());
        let keygen = rate(|| {
            let p = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
            std::hint::black_box(p);
        });
        let sign = rate(|| {
            std::hint::black_box(key.sign(&rng, &msg).unwrap());
        });
        let verify = rate(|| {
            public.verify(&msg, sig.as_ref()).unwrap();
        });
        println!("{:<10} {:>12.0} {:>12.0} {:>12.0}", $name, keygen, sign, verify);
    }};
}

fn main() {
    println!("ECDSA P-256, one thread, operations per second");
    println!("{:<10} {:>12} {:>12} {:>12}", "backend", "keygen", "sign", "verify");
    backend!("ring", ring, |alg, der, rng| ring::signature::EcdsaKeyPair::from_pkcs8(alg, der, rng).unwrap());
    backend!("aws-lc-rs", aws_lc_rs, |alg, der, _rng| aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(alg, der).unwrap());
}
