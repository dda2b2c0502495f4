"""The DNS benchmark (bench/dns/bench.py): swimthor's DNS front-end, Knot DNS and dnslib's own
server under the same dnsperf runs."""
