#!/bin/busybox sh
# /init of the VM tests' guest (tests/vms.rs): a busybox initramfs built by
# `cargo xtask vm-image`. It loads the virtio modules, then runs the commands the
# test sends on the serial console, one per line, and answers each with
# "horcrux-guest done <command>":
#   write <MiB>   O_DIRECT writes of <MiB> MiB of zeros to /dev/vda
#   net <count>   <count> 1000-byte pings to the host's tap (10.231.0.1)
#   burn <s>      keep the vCPU busy for <s> seconds (in the background)
#   poweroff      power the guest off
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for module in @MODULES@; do insmod /modules/$module 2>/dev/null; done
tries=0
while [ ! -b /dev/vda ] && [ $tries -lt 300 ]; do sleep 0.1; tries=$((tries+1)); done
ip link set lo up
echo "horcrux-guest ready" > /dev/ttyS0
while read -r command argument; do
    case "$command" in
        write)
            dd if=/dev/zero of=/dev/vda bs=1M count="${argument:-64}" oflag=direct 2>/dev/null
            echo "horcrux-guest done write";;
        net)
            ip addr add 10.231.0.2/24 dev eth0 2>/dev/null
            ip link set eth0 up
            ping -c "${argument:-20}" -s 1000 -i 0.2 -W 2 10.231.0.1 >/dev/null 2>&1
            echo "horcrux-guest done net";;
        burn)
            end=$(( $(date +%s) + ${argument:-30} ))
            ( while [ "$(date +%s)" -lt "$end" ]; do :; done ) &
            echo "horcrux-guest done burn";;
        poweroff)
            echo "horcrux-guest bye"
            poweroff -f;;
        *)
            echo "horcrux-guest unknown $command";;
    esac
done < /dev/ttyS0 > /dev/ttyS0 2>&1
poweroff -f
