#!/usr/bin/env bash
# natlab: a NAT in network namespaces, to see why FTPS breaks behind one and what ftpsgate
# changes. Needs root, iproute2 and nftables. Everything lives in namespaces named LAB-*; no
# packet leaves them (the "internet" is one veth pair, with documentation-range addresses).
#
#   natlab.sh up LAB [--double]   build it (--double: a second NAT router, the outermost one
#                                 holding the public address)
#   natlab.sh down LAB            kill what runs inside and remove it all
#   natlab.sh helper LAB          attach the FTP helper (ALG) to port 21 on every router
#   natlab.sh forward LAB PORTS   forward PORTS ("21" or "50000-50099") from the public address
#                                 to the FTP server, as a router would without ftpsgate
#   natlab.sh demo                the story, start to end, with vsftpd, curl and ftpsgate
#
#   LAB-client   203.0.113.10/25   "the internet": reaches only 203.0.113.0/25, no default route
#   LAB-edge     203.0.113.1  | 203.0.113.129      (--double only: the outer NAT)
#   LAB-router   203.0.113.1  | 198.51.100.1       (with --double its outside is 203.0.113.130)
#   LAB-gw       198.51.100.10 | 192.0.2.1         the gateway's host (a DMZ), routes inward
#   LAB-ftp      192.0.2.10                        the internal FTP server
#
# The public address is always 203.0.113.1. Each router masquerades what leaves by its `wan`
# side and forwards inward only what a prerouting rule sent there (`ct status dnat`) or what
# belongs to a connection already allowed (established, related).
set -euo pipefail

PUBLIC=203.0.113.1
CLIENT=203.0.113.10
GATEWAY_HOST=198.51.100.10
SERVER=192.0.2.10

ns() { ip netns exec "$LAB-$1" "${@:2}"; }

# link A IFA ADDR_A B IFB ADDR_B: a veth pair between two namespaces.
link() {
    ip link add "$2" netns "$LAB-$1" type veth peer name "$5" netns "$LAB-$4"
    ns "$1" ip addr add "$3" dev "$2"
    ns "$4" ip addr add "$6" dev "$5"
    ns "$1" ip link set "$2" up
    ns "$4" ip link set "$5" up
}

router_rules() {
    ns "$1" sysctl -qw net.ipv4.ip_forward=1
    ns "$1" nft -f - <<'EOF'
table inet lab {
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "lan" accept
        ct status dnat accept
    }
}
table ip nat {
    chain prerouting { type nat hook prerouting priority dstnat; }
    chain postrouting {
        type nat hook postrouting priority srcnat;
        oifname "wan" masquerade
    }
}
EOF
}

routers() {
    if ip netns list 2>/dev/null | grep -q "^$LAB-edge\b"; then echo edge router; else echo router; fi
}

up() {
    local double=${1:-}
    local names=(client router gw ftp)
    [ "$double" = --double ] && names+=(edge)
    for n in "${names[@]}"; do
        ip netns add "$LAB-$n"
        ns "$n" ip link set lo up
    done
    if [ "$double" = --double ]; then
        link client wan "$CLIENT/25" edge wan "$PUBLIC/25"
        link edge lan 203.0.113.129/25 router wan 203.0.113.130/25
        ns router ip route add default via 203.0.113.129
        router_rules edge
    else
        link client wan "$CLIENT/25" router wan "$PUBLIC/25"
    fi
    link router lan 198.51.100.1/24 gw dmz "$GATEWAY_HOST/24"
    link gw int 192.0.2.1/24 ftp int "$SERVER/24"
    ns router ip route add 192.0.2.0/24 via "$GATEWAY_HOST"
    ns gw ip route add default via 198.51.100.1
    ns gw sysctl -qw net.ipv4.ip_forward=1
    ns ftp ip route add default via 192.0.2.1
    router_rules router
}

down() {
    for n in client edge router gw ftp; do
        ip netns list 2>/dev/null | grep -q "^$LAB-$n\b" || continue
        for pid in $(ip netns pids "$LAB-$n"); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$LAB-$n"
    done
}

helper() {
    for r in $(routers); do
        ns "$r" nft -f - <<'EOF'
table inet alg {
    ct helper ftp { type "ftp" protocol tcp; }
    chain prerouting {
        type filter hook prerouting priority filter;
        tcp dport 21 ct helper set "ftp"
    }
}
EOF
    done
}

# forward PORTS: every router sends PORTS on its own address one hop inward.
forward() {
    local ports=$1 dest=${2:-$SERVER}
    if ip netns list 2>/dev/null | grep -q "^$LAB-edge\b"; then
        ns edge nft add rule ip nat prerouting fib daddr type local tcp dport "$ports" \
            dnat to 203.0.113.130
    fi
    ns router nft add rule ip nat prerouting fib daddr type local tcp dport "$ports" \
        dnat to "$dest"
}

demo() {
    LAB=natlab-demo
    local here bin
    here=$(cd "$(dirname "$0")/../.." && pwd)
    bin=${FTPSGATE:-$here/target/release/ftpsgate}
    [ -x "$bin" ] || bin=$here/target/debug/ftpsgate
    [ -x "$bin" ] || { echo "build ftpsgate first (cargo build --release)"; exit 1; }
    work=$(mktemp -d)
    chmod 755 "$work"
    trap 'down; rm -rf "$work"' EXIT
    down
    up
    id ftpdemo >/dev/null 2>&1 || useradd -M -d "$work/root" ftpdemo
    echo 'ftpdemo:demo-pw-1' | chpasswd
    mkdir -p "$work/root" /var/run/vsftpd/empty
    head -c 1048576 /dev/urandom > "$work/root/file.bin"
    chown -R ftpdemo "$work/root"
    "$bin" cert --out "$work/tls" --name "$PUBLIC" >/dev/null
    cat > "$work/vsftpd.conf" <<EOF
listen=YES
listen_address=$SERVER
background=NO
anonymous_enable=NO
local_enable=YES
local_root=$work/root
pasv_min_port=40000
pasv_max_port=40099
seccomp_sandbox=NO
secure_chroot_dir=/var/run/vsftpd/empty
pam_service_name=vsftpd
ssl_enable=YES
rsa_cert_file=$work/tls/cert.pem
rsa_private_key_file=$work/tls/key.pem
force_local_logins_ssl=NO
force_local_data_ssl=NO
EOF
    (ns ftp /usr/sbin/vsftpd "$work/vsftpd.conf" &)
    sleep 1
    local url="ftp://$PUBLIC/file.bin"
    local auth=(--user ftpdemo:demo-pw-1 -o /dev/null --max-time 10 -sS)
    forward 21
    echo "== 1. vsftpd behind the NAT, plain FTP: its 227 names $SERVER"
    ns client curl "${auth[@]}" --disable-epsv --no-ftp-skip-pasv-ip -v "$url" 2>&1 |
        grep -E '^< 227|^\* (Connecting|connect)|^curl' || true
    echo "== 2. the same with the router's FTP helper: the ALG rewrites the 227"
    helper
    ns client curl "${auth[@]}" --disable-epsv --no-ftp-skip-pasv-ip -v "$url" 2>&1 |
        grep -E '^< 227|^curl' || true
    echo "   (curl's exit status: $(ns client curl "${auth[@]}" "$url" >/dev/null 2>&1; echo $?))"
    echo "== 3. FTPS through the same helper: the ALG cannot read the 227 inside TLS"
    ns client curl "${auth[@]}" --disable-epsv --no-ftp-skip-pasv-ip --ssl-reqd -k -v "$url" 2>&1 |
        grep -E '^\* (Connecting|connect)|^curl' || true
    echo "== 4. ftpsgate on $GATEWAY_HOST, external address $PUBLIC, rules from its doctor"
    cat > "$work/ftpsgate.toml" <<EOF
[listen]
explicit = ["0.0.0.0:21"]
implicit = ["0.0.0.0:990"]
[backend]
address = "$SERVER:21"
[passive]
external_address = "$PUBLIC"
ports = "20000-20099"
[tls]
cert = "$work/tls/cert.pem"
key = "$work/tls/key.pem"
EOF
    ns router nft flush chain ip nat prerouting
    ns gw "$bin" doctor --config "$work/ftpsgate.toml" > "$work/doctor.txt" || true
    awk '/^Behind NAT/ { nat = 1 } /^\[/ || nat' "$work/doctor.txt"
    awk '/^Behind NAT/ { nat = 1 } nat && /^ +nft /' "$work/doctor.txt" | while read -r rule; do
        ns router sh -c "$rule"
    done
    (ns gw "$bin" run --config "$work/ftpsgate.toml" 2>"$work/ftpsgate.log" &)
    sleep 1
    ns client curl "${auth[@]}" --ssl-reqd -k "$url" \
        -w '   downloaded %{size_download} bytes over FTPS through ftpsgate (exit %{exitcode})\n'
}

cmd=${1:-}
case "$cmd" in
up) LAB=$2; up "${3:-}" ;;
down) LAB=$2; down ;;
helper) LAB=$2; helper ;;
forward) LAB=$2; forward "$3" "${4:-}" ;;
demo) demo ;;
*) sed -n '2,21p' "$0"; exit 2 ;;
esac
