//! The plugin's TLS crypto: aws-lc (as everywhere else in hostforge) for
//! ciphers, hashes and certificate checks, but the handshake's randomness
//! and ephemeral key exchange from `ring`, which reads the kernel's random
//! source directly.
//!
//! Why: aws-lc seeds its random generator from a CPU-jitter entropy source
//! the first time anything in the process asks it for random bytes. That
//! costs ~40 ms of CPU (86 % of a getAvailableTemplates process's samples
//! under `perf`), once per process: nothing for the operator, but the plugin
//! is a fresh process for every HostFactory call. The TLS client needs
//! random bytes only for its hello and its key share; taking those from
//! `ring` leaves aws-lc's generator untouched. Offered groups: X25519,
//! P-256, P-384 (not the post-quantum hybrid aws-lc would add; these
//! connections live for one call). A kubeconfig with a client certificate
//! still signs with aws-lc, so its first call pays the seeding once.

use ring::agreement;
use ring::rand::SecureRandom as _;
use rustls::crypto::{
    ActiveKeyExchange, CryptoProvider, GetRandomFailed, SecureRandom, SharedSecret,
    SupportedKxGroup,
};
use rustls::{NamedGroup, PeerMisbehaved};

/// Makes the plugin's provider the process default, which kube's client
/// builder then uses. Returns false when a default was already installed
/// (it is then left as it is).
pub fn install_provider() -> bool {
    provider().install_default().is_ok()
}

/// aws-lc's provider with `ring`'s key exchange and random bytes.
pub fn provider() -> CryptoProvider {
    CryptoProvider {
        kx_groups: vec![&X25519, &SECP256R1, &SECP384R1],
        secure_random: &KernelRandom,
        ..rustls::crypto::aws_lc_rs::default_provider()
    }
}

/// Random bytes from the kernel (getrandom), through `ring`.
#[derive(Debug)]
struct KernelRandom;

impl SecureRandom for KernelRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        ring::rand::SystemRandom::new()
            .fill(buf)
            .map_err(|_| GetRandomFailed)
    }
}

/// One ephemeral key-exchange group implemented by `ring`.
struct RingGroup {
    name: NamedGroup,
    algorithm: &'static agreement::Algorithm,
}

static X25519: RingGroup = RingGroup {
    name: NamedGroup::X25519,
    algorithm: &agreement::X25519,
};
static SECP256R1: RingGroup = RingGroup {
    name: NamedGroup::secp256r1,
    algorithm: &agreement::ECDH_P256,
};
static SECP384R1: RingGroup = RingGroup {
    name: NamedGroup::secp384r1,
    algorithm: &agreement::ECDH_P384,
};

impl std::fmt::Debug for RingGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.name.fmt(f)
    }
}

impl SupportedKxGroup for RingGroup {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
        let rng = ring::rand::SystemRandom::new();
        let private = agreement::EphemeralPrivateKey::generate(self.algorithm, &rng)
            .map_err(|_| GetRandomFailed)?;
        let public = private.compute_public_key().map_err(|_| GetRandomFailed)?;
        Ok(Box::new(RingExchange {
            name: self.name,
            algorithm: self.algorithm,
            private,
            public: public.as_ref().to_vec(),
        }))
    }

    fn name(&self) -> NamedGroup {
        self.name
    }
}

/// A key exchange in progress: our private key and the share we sent.
struct RingExchange {
    name: NamedGroup,
    algorithm: &'static agreement::Algorithm,
    private: agreement::EphemeralPrivateKey,
    public: Vec<u8>,
}

impl ActiveKeyExchange for RingExchange {
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<SharedSecret, rustls::Error> {
        // ring checks the peer's share (length, point on the curve).
        let peer = agreement::UnparsedPublicKey::new(self.algorithm, peer);
        agreement::agree_ephemeral(self.private, &peer, |secret: &[u8]| {
            SharedSecret::from(secret)
        })
        .map_err(|_| rustls::Error::PeerMisbehaved(PeerMisbehaved::InvalidKeyShare))
    }

    fn pub_key(&self) -> &[u8] {
        &self.public
    }

    fn group(&self) -> NamedGroup {
        self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both sides of each group agree on the secret, and a share that is not
    /// a point of the group is refused rather than used.
    #[test]
    fn every_group_agrees_with_itself_and_refuses_garbage() {
        for group in provider().kx_groups {
            let a = group.start().expect("start a");
            let b = group.start().expect("start b");
            assert_eq!(a.group(), group.name());
            let b_pub = b.pub_key().to_vec();
            let a_pub = a.pub_key().to_vec();
            let ab = a.complete(&b_pub).expect("a completes");
            let ba = b.complete(&a_pub).expect("b completes");
            assert_eq!(ab.secret_bytes(), ba.secret_bytes(), "{:?}", group.name());
            assert!(!ab.secret_bytes().iter().all(|b| *b == 0));
            let c = group.start().expect("start c");
            let garbage = vec![0xffu8; c.pub_key().len() + 1];
            assert!(c.complete(&garbage).is_err(), "{:?}", group.name());
        }
    }

    #[test]
    fn random_bytes_come_from_the_kernel_and_differ() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        KernelRandom.fill(&mut a).expect("fill");
        KernelRandom.fill(&mut b).expect("fill");
        assert_ne!(a, b);
    }
}
