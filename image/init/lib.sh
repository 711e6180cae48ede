# Shared helpers of the appliance scripts (/init, appliance-update, appliance-bless).
# Sourced by busybox sh; installed as /lib/appliance/lib.sh.

ESP_MOUNT=/run/esp
# systemd's loader vendor GUID: LoaderEntrySelected names the entry systemd-boot booted.
LOADER_GUID=4a67b082-0a4c-41cf-b6c7-440b29bb8c4f

# Prints /dev/<name> of the partition whose GPT partition name is $1.
find_partition() {
    for uevent in /sys/class/block/*/uevent; do
        if grep -qx "PARTNAME=$1" "$uevent" 2>/dev/null; then
            echo "/dev/$(sed -n 's/^DEVNAME=//p' "$uevent")"
            return 0
        fi
    done
    return 1
}

# Waits up to $2 seconds for the partition named $1 (block drivers probe asynchronously).
wait_partition() {
    tries=$(($2 * 10))
    while [ "$tries" -gt 0 ]; do
        find_partition "$1" && return 0
        usleep 100000
        tries=$((tries - 1))
    done
    return 1
}

# Mounts the ESP read-write at $ESP_MOUNT (idempotent).
mount_esp() {
    grep -q " $ESP_MOUNT " /proc/mounts && return 0
    esp=$(wait_partition ESP 5) || { echo "no partition named ESP" >&2; return 1; }
    mkdir -p "$ESP_MOUNT"
    mount -t vfat -o rw,noatime,flush "$esp" "$ESP_MOUNT"
}

# The slot (a or b) systemd-boot booted, from the LoaderEntrySelected EFI variable; fails when
# not booted through systemd-boot (direct kernel boot).
booted_slot() {
    var=/sys/firmware/efi/efivars/LoaderEntrySelected-$LOADER_GUID
    if [ -d /sys/firmware/efi ] && [ ! -e "$var" ]; then
        grep -q efivarfs /proc/mounts || mount -t efivarfs efivarfs /sys/firmware/efi/efivars 2>/dev/null
    fi
    [ -e "$var" ] || return 1
    # 4 bytes of attributes, then UTF-16LE: drop the NULs of the ASCII name.
    entry=$(tail -c +5 "$var" | tr -d '\000')
    case "$entry" in
        appliance-a*) echo a ;;
        appliance-b*) echo b ;;
        *) return 1 ;;
    esac
}

# The entry file of slot $1 on the mounted ESP (with or without a boot counter), if any.
slot_entry() {
    for entry in "$ESP_MOUNT"/loader/entries/appliance-"$1".conf "$ESP_MOUNT"/loader/entries/appliance-"$1"+*.conf; do
        [ -e "$entry" ] && { echo "$entry"; return 0; }
    done
    return 1
}

# The `version` of slot $1's entry (0 when it has none).
slot_version() {
    entry=$(slot_entry "$1") || { echo 0; return 0; }
    version=$(sed -n 's/^version[[:space:]]*//p' "$entry" | head -n 1)
    echo "${version:-0}"
}

other_slot() {
    if [ "$1" = a ]; then echo b; else echo a; fi
}
