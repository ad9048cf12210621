"""py-spiffe fetches a JWT-SVID, has the server validate it, validates it
locally against the fetched JWT bundle, and checks that a wrong audience is
refused by both.

Usage: SPIFFE_ENDPOINT_SOCKET=unix:///path fetch_jwt.py EXPECTED_SPIFFE_ID AUDIENCE
Prints "ok jwt ..." and exits 0, or raises (exit 1).
"""
import sys

from spiffe import JwtSvid, WorkloadApiClient


def main():
    expected, audience = sys.argv[1], sys.argv[2]
    with WorkloadApiClient(default_timeout=20) as client:
        svid = client.fetch_jwt_svid(audience={audience})
        assert str(svid.spiffe_id) == expected, f"JWT-SVID is for {svid.spiffe_id}, expected {expected}"
        validated = client.validate_jwt_svid(svid.token, audience)
        assert str(validated.spiffe_id) == expected
        bundle = client.fetch_jwt_bundles().get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
        assert bundle is not None, "no JWT bundle for the SVID's trust domain"
        local = JwtSvid.parse_and_validate(svid.token, bundle, {audience})
        assert str(local.spiffe_id) == expected
        for name, check in [
            ("server", lambda: client.validate_jwt_svid(svid.token, "someone-else")),
            ("local", lambda: JwtSvid.parse_and_validate(svid.token, bundle, {"someone-else"})),
        ]:
            try:
                check()
            except Exception as err:  # the refusal is the point
                print(f"{name} refused a wrong audience: {type(err).__name__}", flush=True)
            else:
                raise AssertionError(f"{name} accepted a JWT-SVID for the wrong audience")
        print("ok jwt", svid.spiffe_id, flush=True)


if __name__ == "__main__":
    main()
