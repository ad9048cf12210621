"""What the PKI API scripts share: hvac clients pointed at trustmesh (the
environment names the server, the CA bundle and the tokens), and keys and
CSRs made with `cryptography`."""
import base64
import os

import hvac
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

MOUNT = os.environ.get("VAULT_MOUNT", "pki")


def client(token=None):
    """An unmodified hvac client: VAULT_ADDR, the token (VAULT_TOKEN by
    default), and trustmesh's ca-bundle.pem to check the server."""
    return hvac.Client(
        url=os.environ["VAULT_ADDR"],
        token=os.environ["VAULT_TOKEN"] if token is None else token,
        verify=os.environ["VAULT_CACERT"],
    )


def out(name):
    return os.path.join(os.environ["OUT"], name)


def write(name, text):
    with open(out(name), "w") as f:
        f.write(text)


def csr(key, common_name=None, dns=(), uris=()):
    """A PEM CSR signed by `key` (SHA-256; Ed25519 signs without a separate hash)."""
    names = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names))
    sans = [x509.DNSName(d) for d in dns] + [x509.UniformResourceIdentifier(u) for u in uris]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    signed = builder.sign(key, algorithm)
    return signed.public_bytes(serialization.Encoding.PEM).decode()


def tampered(pem):
    """The CSR with one bit of its signature flipped: its proof of possession fails."""
    der = bytearray(x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01
    body = base64.encodebytes(bytes(der)).decode()
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"


def cert(pem):
    return x509.load_pem_x509_certificate(pem.encode())


def spki(public_key):
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def common_name(certificate):
    values = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return values[0].value if values else None


def vault_serial(certificate):
    """A certificate's serial as Vault writes it (`1a:2b:…`)."""
    text = format(certificate.serial_number, "x")
    text = ("0" + text) if len(text) % 2 else text
    return ":".join(text[i:i + 2] for i in range(0, len(text), 2))
