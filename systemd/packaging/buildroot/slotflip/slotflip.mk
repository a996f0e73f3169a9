################################################################################
#
# slotflip: a BR2_EXTERNAL package. Not built in slotflip's CI (no Buildroot tree here):
# test/unit/packaging-manifest.test.ts checks its install lines against ../../files.list.
# Source: the `npm pack` tarball made after `npm run build` (dist/ included, no TypeScript needed).
#
################################################################################

SLOTFLIP_VERSION = 0.1.0
SLOTFLIP_SOURCE = slotflip-$(SLOTFLIP_VERSION).tgz
SLOTFLIP_SITE = $(BR2_EXTERNAL_SLOTFLIP_PATH)/dl
SLOTFLIP_SITE_METHOD = file
SLOTFLIP_LICENSE = Apache-2.0
SLOTFLIP_DEPENDENCIES = nodejs host-nodejs host-python3

# production dependencies for the target: unix-dgram (sd_notify) cross-compiled by node-gyp
# against the target Node's headers
define SLOTFLIP_BUILD_CMDS
	cd $(@D) && $(TARGET_CONFIGURE_OPTS) \
		npm_config_arch=$(NODEJS_CPU) npm_config_target_arch=$(NODEJS_CPU) \
		npm_config_nodedir=$(STAGING_DIR)/usr npm_config_build_from_source=true \
		$(HOST_DIR)/bin/npm ci --omit=dev --no-audit --no-fund
endef

define SLOTFLIP_INSTALL_TARGET_CMDS
	mkdir -p $(TARGET_DIR)/usr/lib/slotflip/dist
	cp -a $(@D)/dist/daemon $(@D)/dist/hal $(@D)/dist/manifests $(TARGET_DIR)/usr/lib/slotflip/dist/
	find $(TARGET_DIR)/usr/lib/slotflip/dist -name '*.map' -delete
	cp -a $(@D)/package.json $(@D)/node_modules $(TARGET_DIR)/usr/lib/slotflip/
	$(INSTALL) -D -m 0755 $(@D)/systemd/packaging/slotflip.sh $(TARGET_DIR)/usr/bin/slotflip
	$(INSTALL) -D -m 0755 $(@D)/systemd/slotflip-trial-reboot $(TARGET_DIR)/usr/lib/slotflip/slotflip-trial-reboot
	$(INSTALL) -D -m 0644 $(@D)/systemd/80-slotflip.preset $(TARGET_DIR)/usr/lib/systemd/system-preset/80-slotflip.preset
	$(INSTALL) -D -m 0644 $(@D)/systemd/slotflip.tmpfiles.conf $(TARGET_DIR)/usr/lib/tmpfiles.d/slotflip.conf
	$(INSTALL) -D -m 0644 $(@D)/systemd/examples/x86-grub-efi/config.json $(TARGET_DIR)/etc/slotflip/config.example.json
	$(INSTALL) -D -m 0644 $(@D)/systemd/README.md $(TARGET_DIR)/usr/share/doc/slotflip/systemd/README.md
	$(INSTALL) -D -m 0644 $(@D)/systemd/packaging/README.md $(TARGET_DIR)/usr/share/doc/slotflip/packaging/README.md
endef

define SLOTFLIP_INSTALL_INIT_SYSTEMD
	$(INSTALL) -D -m 0644 $(@D)/systemd/slotflip.service $(TARGET_DIR)/usr/lib/systemd/system/slotflip.service
	$(INSTALL) -D -m 0644 $(@D)/systemd/slotflip-health.service $(TARGET_DIR)/usr/lib/systemd/system/slotflip-health.service
	$(INSTALL) -D -m 0644 $(@D)/systemd/slotflip-trial-failed@.service $(TARGET_DIR)/usr/lib/systemd/system/slotflip-trial-failed@.service
	$(INSTALL) -D -m 0644 $(@D)/systemd/slotflip-trial-deadline.timer $(TARGET_DIR)/usr/lib/systemd/system/slotflip-trial-deadline.timer
	$(INSTALL) -D -m 0644 $(@D)/systemd/slotflip-factory-reset.service $(TARGET_DIR)/usr/lib/systemd/system/slotflip-factory-reset.service
	$(INSTALL) -D -m 0644 $(@D)/systemd/slotflip-migration-settle.service $(TARGET_DIR)/usr/lib/systemd/system/slotflip-migration-settle.service
endef

$(eval $(generic-package))
