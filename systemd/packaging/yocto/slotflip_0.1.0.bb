# Yocto recipe for slotflip. Not built in this repository's CI (no Yocto host here):
# test/unit/packaging-manifest.test.ts checks its install lines against ../files.list.
# Put it in your layer as recipes-support/slotflip/slotflip_0.1.0.bb; create the tarball with
# `npm run build && npm pack` and the shrinkwrap with `devtool add` (or `npm shrinkwrap`).
SUMMARY = "Over-the-air A/B update daemon for unattended Linux devices"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://package.json;md5=SET-ME"

SRC_URI = "file://slotflip-${PV}.tgz;subdir=${BP};striplevel=1 \
           npmsw://${THISDIR}/${BPN}/npm-shrinkwrap.json"
S = "${WORKDIR}/${BP}"

# the npm class runs `npm install --omit=dev` with the target toolchain: unix-dgram (sd_notify) is
# cross-compiled by node-gyp against the target nodejs headers
inherit npm systemd
DEPENDS += "python3-native"
# Node 22 or later (meta-oe scarthgap ships 20: take nodejs from a newer meta-oe or a layer with 22)
RDEPENDS:${PN} += "nodejs (>= 22)"
# one of, per board: libubootenv-bin (fw_printenv/fw_setenv), grub-editenv
RRECOMMENDS:${PN} += "zstd"

SYSTEMD_SERVICE:${PN} = "slotflip.service slotflip-health.service slotflip-trial-deadline.timer slotflip-factory-reset.service slotflip-migration-settle.service"
SYSTEMD_AUTO_ENABLE = "enable"

do_install:append() {
    # the application tree: the npm class put the package in ${nonarch_libdir}/node_modules/slotflip
    install -d ${D}${nonarch_libdir}/slotflip
    mv ${D}${nonarch_libdir}/node_modules/slotflip/* ${D}${nonarch_libdir}/slotflip/
    rm -rf ${D}${nonarch_libdir}/node_modules ${D}${bindir}/slotflip
    rm -rf ${D}${nonarch_libdir}/slotflip/test ${D}${nonarch_libdir}/slotflip/dist/test
    find ${D}${nonarch_libdir}/slotflip/dist -name '*.map' -delete

    # ../files.list, line for line
    install -D -m 0755 ${S}/systemd/packaging/slotflip.sh ${D}${bindir}/slotflip
    install -D -m 0644 ${S}/systemd/slotflip.service ${D}${systemd_system_unitdir}/slotflip.service
    install -D -m 0644 ${S}/systemd/slotflip-health.service ${D}${systemd_system_unitdir}/slotflip-health.service
    install -D -m 0644 ${S}/systemd/slotflip-trial-failed@.service ${D}${systemd_system_unitdir}/slotflip-trial-failed@.service
    install -D -m 0644 ${S}/systemd/slotflip-trial-deadline.timer ${D}${systemd_system_unitdir}/slotflip-trial-deadline.timer
    install -D -m 0644 ${S}/systemd/slotflip-factory-reset.service ${D}${systemd_system_unitdir}/slotflip-factory-reset.service
    install -D -m 0644 ${S}/systemd/slotflip-migration-settle.service ${D}${systemd_system_unitdir}/slotflip-migration-settle.service
    install -D -m 0755 ${S}/systemd/slotflip-trial-reboot ${D}${nonarch_libdir}/slotflip/slotflip-trial-reboot
    install -D -m 0644 ${S}/systemd/80-slotflip.preset ${D}${systemd_unitdir}/system-preset/80-slotflip.preset
    install -D -m 0644 ${S}/systemd/slotflip.tmpfiles.conf ${D}${nonarch_libdir}/tmpfiles.d/slotflip.conf
    install -D -m 0644 ${S}/systemd/examples/x86-grub-efi/config.json ${D}${sysconfdir}/slotflip/config.example.json
    install -D -m 0644 ${S}/systemd/README.md ${D}${docdir}/slotflip/systemd/README.md
    install -D -m 0644 ${S}/systemd/packaging/README.md ${D}${docdir}/slotflip/packaging/README.md
}

FILES:${PN} += "${nonarch_libdir}/slotflip ${systemd_unitdir}/system-preset ${nonarch_libdir}/tmpfiles.d"
CONFFILES:${PN} = "${sysconfdir}/slotflip/config.example.json"
