# make rpm     build the RPMs into build/rpm/RPMS (on Debian with rpm/macros.debian-fallback)
# make lint    rpmlint the built RPMs
# make clean
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' daemons/fitsflow/__init__.py)
TOP ?= $(CURDIR)/build/rpm
# RELEASE=2 make rpm: a newer release of the same version (the upgrade test uses it)
RELEASE ?= 1
TARBALL := $(TOP)/SOURCES/fitsflow-$(VERSION).tar.gz
# Debian's rpm has no systemd/python macros and its dpkg-installed build deps are unknown to rpm.
DEBIAN_FLAGS := $(if $(wildcard /etc/debian_version),--nodeps --load $(CURDIR)/rpm/macros.debian-fallback --define 'fitsflow_rpmdir $(CURDIR)/rpm')
# %check runs the unit tests with an interpreter that has the dependencies: the project's venv if any.
CHECK_PYTHON := $(if $(wildcard .venv/bin/python),--define 'fitsflow_check_python $(CURDIR)/.venv/bin/python')

.PHONY: rpm deps-rpm lint clean tarball

tarball:
	mkdir -p $(TOP)/SOURCES
	git ls-files -co --exclude-standard | grep -v '^build/' | \
	    tar -czf $(TARBALL) --transform 's,^,fitsflow-$(VERSION)/,' -T -
	cp etc/sysusers.d/fitsflow.conf $(TOP)/SOURCES/fitsflow.sysusers

rpm: tarball
	rpmbuild -ba $(DEBIAN_FLAGS) $(CHECK_PYTHON) --define '_topdir $(TOP)' --define 'fitsflow_release $(RELEASE)' rpm/fitsflow.spec

# The pure-Python dependencies EL lacks (rpm/deps/), from their PyPI sdists.
DEPS := inotify_simple==1.3.5
deps-rpm:
	mkdir -p $(TOP)/SOURCES
	python3 -m pip download --quiet --no-deps --no-binary :all: --dest $(TOP)/SOURCES $(DEPS)
	for spec in rpm/deps/*.spec; do \
	    rpmbuild -ba $(DEBIAN_FLAGS) --define '_topdir $(TOP)' $$spec || exit 1; done

lint:
	rpmlint -r rpm/rpmlintrc rpm/fitsflow.spec $(TOP)/RPMS/noarch/*.rpm $(TOP)/SRPMS/*.rpm

clean:
	rm -rf build
